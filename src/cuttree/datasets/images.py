"""Datasets for fine-tuning and evaluation: ``(x, y)`` pairs, ``x`` a float32 CHW tensor, ``y`` an int.

Loaders read local files only (the shared data folder, see :func:`data_root`); the one that
downloads is :func:`torchvision_cifar10`, for users with internet. CIFAR-10 is stored as JPEG
bytes, so its first load decodes them and caches the pixels under ``~/.cache/cuttree``; later
loads read that cache. Images stay uint8 in memory and become float per item (scale, resize,
augment, normalise), so the 50,000 training images take 150 MB rather than 600 MB.

>>> sorted(DATASETS)
['camvid', 'cifar10', 'digits', 'imagefolder', 'mnist', 'segfolder', 'torchvision-cifar10']
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cuttree.core.registry import Registry
from cuttree.errors import did_you_mean, warn
from cuttree.files.cuttree_file import atomic_write

Split = Literal["train", "test"]
Normalize = Literal["imagenet", "none", "raw255"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# normalize name -> (divide by, mean, std); "raw255" is what the MLPerf Tiny Keras model expects.
_NORMALIZE: dict[str, tuple[float, tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "imagenet": (255.0, IMAGENET_MEAN, IMAGENET_STD),
    "none": (255.0, None, None),
    "raw255": (1.0, None, None),
}
_DIGIT_CLASSES = [str(c) for c in range(10)]
_CACHE_VERSION = "v1"  # bump when the cache layout changes, so old files are not read

_Loader = TypeVar("_Loader", bound=Callable[..., Any])
DATASETS: Registry[str, Callable[..., Dataset[Any]]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[_Loader], _Loader]:
    """Register a loader for :func:`load_dataset`, which calls it as ``fn(split=..., **kw)``."""
    return DATASETS.decorator(name)


def load_dataset(name: str, split: str, **kw: Any) -> Dataset[Any]:
    """Load a registered dataset by name, e.g. ``load_dataset("cifar10", "test", limit=1000)``."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset '{name}' (known: {', '.join(sorted(DATASETS))}){did_you_mean(name, DATASETS)}"
        )
    return DATASETS[name](split=split, **kw)


def data_root() -> Path:
    """The shared data folder: ``$CUTTREE_DATA``, else ``../shared/data`` from the working directory,
    else ``shared/data`` beside the repository that holds this source file."""
    env = os.environ.get("CUTTREE_DATA")
    if env:
        return Path(env)
    beside_cwd = Path.cwd().parent / "shared" / "data"
    if beside_cwd.is_dir():
        return beside_cwd
    return Path(__file__).resolve().parents[4] / "shared" / "data"  # <repo>/src/cuttree/datasets/images.py -> <repo>/..


@dataclass(frozen=True)
class ItemTransform:
    """What turns one stored uint8 image into the model's input, in this order.

    Divide by ``scale``; resize to ``size``×``size`` (bilinear); with ``augment``, pad 4 zero
    pixels each side, crop back to the size at a random place and flip left-right half the time;
    subtract ``mean`` and divide by ``std``; repeat a single channel ``channels`` times.
    """

    scale: float = 255.0
    size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False


class ImageTensors(Dataset[tuple[torch.Tensor, int]]):
    """Images held as a uint8 ``(N, C, H, W)`` tensor, made float32 per item by ``transform``.

    ``indices`` are the rows of the source file that were kept; ``classes`` names each label.
    Augmentation draws from ``generator`` (or the global RNG when None, which is what DataLoader
    workers want: each worker's global RNG is seeded apart, a shared generator would repeat).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray,
        classes: Sequence[str],
        transform: ItemTransform,
        generator: torch.Generator | None = None,
    ) -> None:
        self.images, self.targets, self.indices = images, labels, indices
        self.classes, self.transform, self.generator = list(classes), transform, generator
        t = transform
        self._mean = None if t.mean is None else torch.tensor(t.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = None if t.std is None else torch.tensor(t.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def without_augmentation(self) -> ImageTensors:
        """The same images, read without random crops and flips (what validation reads)."""
        if not self.transform.augment:
            return self
        plain = copy.copy(self)
        plain.transform = dataclasses.replace(self.transform, augment=False)
        return plain

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        t = self.transform
        x = self.images[i].float()
        if t.scale != 1:
            x = x / t.scale
        if t.size is not None and tuple(x.shape[-2:]) != (t.size, t.size):
            x = F.interpolate(x[None], size=(t.size, t.size), mode="bilinear", align_corners=False)[0]
        if t.augment:
            x = _crop_flip(x, self.generator)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean) / self._std
        if t.channels is not None and x.shape[0] != t.channels:
            x = x.repeat(t.channels, 1, 1)
        return x, int(self.targets[i])


def _crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = torch.randint(0, 9, (2,), generator=generator).tolist()
    x = F.pad(x, (4, 4, 4, 4))[:, top : top + h, left : left + w]
    return x.flip(-1) if torch.randint(0, 2, (1,), generator=generator).item() else x


def check_choice(arg: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{arg}='{value}' is not one of {', '.join(choices)}{did_you_mean(value, choices)}")


def _data_file(root: str | Path | None, folder: str, name: str, what: str) -> Path:
    path = (Path(root) if root is not None else data_root()) / folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file '{path}' does not exist; pass root= or set CUTTREE_DATA to the folder holding {folder}/ "
            "(the shared data folder)"
        )
    return path


def _balanced(y: np.ndarray, limit: int | None, what: str) -> np.ndarray:
    """Rows of a class-balanced subset: the first ``limit // k`` of each of the ``k`` classes
    (the remainder goes one each to the lowest labels), in file order; all rows when None."""
    if limit is None:
        return np.arange(len(y))
    if not 0 < limit <= len(y):
        raise ValueError(f"limit={limit} for {what} must be between 1 and {len(y)} (its size); pass None for all")
    labels = np.unique(y)
    per, extra = divmod(limit, len(labels))
    rows = []
    for k, c in enumerate(labels):
        want = per + int(k < extra)
        found = np.flatnonzero(y == c)[:want]
        if len(found) < want:
            raise ValueError(f"limit={limit} for {what}: class {c} has only {len(found)} images; pass a smaller limit")
        rows.append(found)
    return np.sort(np.concatenate(rows))


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$XDG_CACHE_HOME/cuttree``, by default ``~/.cache/cuttree``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cuttree"


def _decode_jpeg_npz(path: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(x (N, H, W, 3) uint8, y, classes)`` of a JPEG npz, from the cache when the file is unchanged."""
    st = path.stat()
    cached = cache / f"{path.stem}-{_CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as d:
                return d["x"], d["y"], [str(c) for c in d["classes"]]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            warn(f"unreadable cache '{cached}' ({e}); decoding '{path}' again")
    try:
        from PIL import Image
    except ImportError as e:
        raise ValueError("decoding CIFAR-10's JPEGs needs Pillow; pip install pillow") from e
    with np.load(path) as d:
        jpeg, offsets, y, classes = d["jpeg"], d["offsets"], d["y"], d["classes"]
    x = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[a:b].tobytes())).convert("RGB")) for a, b in pairwise(offsets)])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, x=x, y=y, classes=classes)

    try:
        atomic_write(cached, write)
    except OSError as e:
        warn(f"could not write the decode cache '{cached}' ({e}); the next load decodes again")
    return x, y, [str(c) for c in classes]


def _rgb_dataset(
    decoded: tuple[np.ndarray, np.ndarray, list[str]],
    what: str,
    limit: int | None,
    normalize: str,
    augment: bool,
    generator: torch.Generator | None,
) -> ImageTensors:
    x, y, classes = decoded
    scale, mean, std = _NORMALIZE[normalize]
    rows = _balanced(y, limit, what)
    images = torch.from_numpy(np.ascontiguousarray(x[rows].transpose(0, 3, 1, 2)))
    transform = ItemTransform(scale=scale, mean=mean, std=std, augment=augment)
    return ImageTensors(images, torch.from_numpy(y[rows].astype(np.int64)), rows, classes, transform, generator)


@register_dataset("cifar10")
def cifar10(
    split: Split,
    root: str | Path | None = None,
    limit: int | None = None,
    normalize: Normalize = "imagenet",
    augment: bool = False,
    generator: torch.Generator | None = None,
    cache: str | Path | None = None,
) -> ImageTensors:
    """CIFAR-10 from ``<root>/cifar10/cifar10_{split}_jpeg.npz`` (JPEG re-encoded; see the data README).

    ``normalize``: "imagenet" (the pretrained ResNets), "none" ([0, 1]) or "raw255" (0–255, the
    Keras model). ``limit``: a class-balanced subset, the first of each class in file order.
    ``augment``: random crop with padding 4 and horizontal flip (for training). ``cache``: the
    folder for decoded pixels (default :func:`cache_dir`), keyed by the file's size and mtime.
    """
    check_choice("split", split, ["train", "test"])
    check_choice("normalize", normalize, list(_NORMALIZE))
    path = _data_file(root, "cifar10", f"cifar10_{split}_jpeg.npz", "CIFAR-10")
    decoded = _decode_jpeg_npz(path, Path(cache) if cache is not None else cache_dir())
    return _rgb_dataset(decoded, f"CIFAR-10 {split}", limit, normalize, augment, generator)


def cifar10_arrays(
    split: Split, root: str | Path | None = None, limit: int | None = None, cache: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as numpy ``(x (N, 32, 32, 3) uint8, y (N,) int64)``, channels last, for Keras models;
    ``limit`` is the same class-balanced subset as :func:`cifar10`'s."""
    check_choice("split", split, ["train", "test"])
    path = _data_file(root, "cifar10", f"cifar10_{split}_jpeg.npz", "CIFAR-10")
    x, y, _ = _decode_jpeg_npz(path, Path(cache) if cache is not None else cache_dir())
    rows = _balanced(y, limit, f"CIFAR-10 {split}")
    return x[rows], y[rows].astype(np.int64)


@register_dataset("torchvision-cifar10")
def torchvision_cifar10(
    root: str | Path,
    split: Split,
    download: bool = True,
    limit: int | None = None,
    normalize: Normalize = "imagenet",
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> ImageTensors:
    """The original CIFAR-10 through ``torchvision.datasets.CIFAR10`` (downloads into ``root``
    when ``download``); the same options and items as :func:`cifar10`."""
    check_choice("split", split, ["train", "test"])
    check_choice("normalize", normalize, list(_NORMALIZE))
    folder = Path(root) / "cifar-10-batches-py"
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder '{folder}' does not exist and download=False; pass download=True (needs internet) "
            "or root= the folder holding cifar-10-batches-py/"
        )
    try:
        from torchvision.datasets import CIFAR10  # type: ignore[import-untyped]
    except ImportError as e:
        raise ValueError("torchvision_cifar10 needs torchvision; pip install torchvision") from e
    ds = CIFAR10(str(root), train=split == "train", download=download)
    decoded = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    return _rgb_dataset(decoded, f"CIFAR-10 {split}", limit, normalize, augment, generator)


@register_dataset("mnist")
def mnist(
    split: Split, root: str | Path | None = None, limit: int | None = None, size: int = 28, channels: int = 1
) -> ImageTensors:
    """MNIST from ``<root>/mnist/mnist_{split}.npz``, in [0, 1], resized to ``size`` (bilinear) and
    repeated to ``channels``; ``limit`` takes a class-balanced subset (first of each class)."""
    check_choice("split", split, ["train", "test"])
    if size < 1 or channels < 1:
        raise ValueError(f"size={size} and channels={channels} must be positive")
    path = _data_file(root, "mnist", f"mnist_{split}.npz", "MNIST")
    with np.load(path) as d:
        x, y = d["x"], d["y"]
    rows = _balanced(y, limit, f"MNIST {split}")
    images, labels = torch.from_numpy(x[rows])[:, None], torch.from_numpy(y[rows].astype(np.int64))
    return ImageTensors(images, labels, rows, _DIGIT_CLASSES, ItemTransform(scale=255.0, size=size, channels=channels))


def stratified_split(y: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, test rows)``, sorted: ``round(n_c * test_fraction)`` random rows of each class
    ``c`` go to test (a numpy ``default_rng(seed)`` permutation, so the same seed gives the same split)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    test = [
        rng.permutation(rows)[: int(len(rows) * test_fraction + 0.5)]
        for rows in (np.flatnonzero(y == c) for c in np.unique(y))
    ]
    test_rows = np.sort(np.concatenate(test))
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise ValueError(
            f"test_fraction={test_fraction} leaves an empty split of {len(y)} samples; pick one nearer 0.5"
        )
    return train_rows, test_rows


@register_dataset("digits")
def digits(
    split: Split,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    test_fraction: float = 0.25,
    limit: int | None = None,
) -> ImageTensors:
    """scikit-learn's bundled 8×8 digits (1,797 images, no download), in [0, 1], resized to
    ``size`` (bilinear) and repeated to ``channels``; split by :func:`stratified_split`;
    ``limit`` takes a class-balanced subset of the split (the first of each class)."""
    check_choice("split", split, ["train", "test"])
    if size < 1 or channels < 1:
        raise ValueError(f"size={size} and channels={channels} must be positive")
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as e:
        raise ValueError("digits needs scikit-learn; pip install scikit-learn") from e
    bunch = load_digits()
    y = bunch.target.astype(np.int64)
    train_rows, test_rows = stratified_split(y, seed, test_fraction)
    rows = train_rows if split == "train" else test_rows
    rows = rows[_balanced(y[rows], limit, f"digits {split}")]
    images = torch.from_numpy(bunch.images[rows].astype(np.uint8))[:, None]  # whole numbers 0..16
    return ImageTensors(images, torch.from_numpy(y[rows]), rows, _DIGIT_CLASSES, ItemTransform(16.0, size, channels))


@register_dataset("imagefolder")
def image_folder(path: str | Path, size: int = 32, split: str | None = None) -> Dataset[Any]:
    """``torchvision.datasets.ImageFolder`` (one sub-folder per class) resized to ``size``×``size``,
    in [0, 1]; with ``split`` (as :func:`load_dataset` passes it) the folder ``path/split``."""
    folder = Path(path) / split if split else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder '{folder}' does not exist; pass the folder holding one sub-folder of images per class"
            + (f" (load_dataset adds the split: '{split}/' under path)" if split else "")
        )
    try:
        from torchvision import datasets, transforms  # type: ignore[import-untyped]
    except ImportError as e:
        raise ValueError("image_folder needs torchvision; pip install torchvision") from e
    return datasets.ImageFolder(
        str(folder), transform=transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    )
