"""Dataset loaders: exact sizes, labels, pixel values (against PIL directly), cache, errors."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cuttree.datasets import images as data
from cuttree.datasets.images import IMAGENET_MEAN, IMAGENET_STD, ImageTensors

DIGITS_PER_CLASS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's load_digits
DIGITS_TEST_PER_CLASS = [45, 46, 44, 46, 45, 46, 45, 45, 44, 45]  # round-half-up of 0.25 × the above


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader called without ``cache=`` must not write into the real ``~/.cache``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / "cuttree"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path.home() / ".cache" / "cuttree"


# ---- registry and errors -------------------------------------------------------------------------


def test_registry_names() -> None:
    assert sorted(data.DATASETS) == [
        "camvid", "cifar10", "digits", "imagefolder", "mnist", "segfolder", "torchvision-cifar10",
    ]  # fmt: skip


def test_unknown_dataset_name() -> None:
    with pytest.raises(ValueError) as e:
        data.load_dataset("cifar", "test")
    assert str(e.value) == (
        "unknown dataset 'cifar' (known: camvid, cifar10, digits, imagefolder, mnist, segfolder, torchvision-cifar10)"
        " — did you mean 'cifar10'?"
    )


def test_bad_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^split='tset' is not one of train, test — did you mean 'test'\?$"):
        data.cifar10("tset", root=tmp_path)  # type: ignore[arg-type]
    msg = r"^normalize='imagnet' is not one of imagenet, none, raw255 — did you mean 'imagenet'\?$"
    with pytest.raises(ValueError, match=msg):
        data.cifar10("test", root=tmp_path, normalize="imagnet")  # type: ignore[arg-type]


def test_missing_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError) as e:
        data.cifar10("test", root=tmp_path)
    assert str(e.value) == (
        f"CIFAR-10 file '{tmp_path}/cifar10/cifar10_test_jpeg.npz' does not exist; pass root= or set "
        "CUTTREE_DATA to the folder holding cifar10/ (the shared data folder)"
    )
    monkeypatch.setenv("CUTTREE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"^MNIST file '.*/nowhere/mnist/mnist_train\.npz' does not exist; "):
        data.mnist("train")
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("imagefolder", "train", path=tmp_path / "imgs")
    assert str(e.value) == (
        f"image folder '{tmp_path}/imgs/train' does not exist; pass the folder holding one sub-folder of images "
        "per class (load_dataset adds the split: 'train/' under path)"
    )
    with pytest.raises(FileNotFoundError) as e:
        data.torchvision_cifar10(tmp_path, "test", download=False)
    assert str(e.value) == (
        f"CIFAR-10 folder '{tmp_path}/cifar-10-batches-py' does not exist and download=False; pass download=True "
        "(needs internet) or root= the folder holding cifar-10-batches-py/"
    )


def test_data_root_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTTREE_DATA", str(tmp_path / "d"))
    assert data.data_root() == tmp_path / "d"
    monkeypatch.delenv("CUTTREE_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert data.data_root() == tmp_path / "shared" / "data"
    monkeypatch.chdir(tmp_path)  # tmp_path.parent has no shared/data: fall back to beside the source tree
    repo = Path(data.__file__).resolve().parents[3]  # <repo>/src/cuttree/datasets/images.py
    assert data.data_root() == repo.parent / "shared" / "data"


# ---- CIFAR-10 (test split decoded once per module, into a private cache) --------------------------


@pytest.fixture(scope="module")
def cifar_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"cache": tmp_path_factory.mktemp("cuttree-cache")}


@pytest.fixture
def cifar_test(data_dir: Path, cifar_state: dict[str, Any]) -> ImageTensors:
    if "ds" not in cifar_state:
        t = time.perf_counter()
        cifar_state["ds"] = data.cifar10("test", root=data_dir, cache=cifar_state["cache"])
        cifar_state["first_s"] = time.perf_counter() - t
    return cifar_state["ds"]  # type: ignore[no-any-return]


def _pil_pixel(data_dir: Path, row: int, r: int, c: int) -> np.ndarray:
    from PIL import Image

    with np.load(data_dir / "cifar10" / "cifar10_test_jpeg.npz") as d:
        jpeg, offsets = d["jpeg"], d["offsets"]
    img = Image.open(io.BytesIO(jpeg[offsets[row] : offsets[row + 1]].tobytes())).convert("RGB")
    return np.asarray(img)[r, c]


def test_cifar10_test_split(cifar_test: ImageTensors) -> None:
    assert len(cifar_test) == 10_000
    assert np.bincount(cifar_test.targets.numpy()).tolist() == [1000] * 10
    assert cifar_test.classes[:3] == ["airplane", "automobile", "bird"] and cifar_test.classes[9] == "truck"
    x, y = cifar_test[9999]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 9


def test_cifar10_limit_is_balanced(data_dir: Path, cifar_test: ImageTensors, cifar_state: dict[str, Any]) -> None:
    ds = data.cifar10("test", root=data_dir, limit=100, cache=cifar_state["cache"])
    assert len(ds) == 100
    assert ds.indices.tolist() == [c * 1000 + j for c in range(10) for j in range(10)]  # files are in class order
    assert np.bincount(ds.targets.numpy()).tolist() == [10] * 10
    assert ds[0][0].shape == (3, 32, 32)
    assert len(data.cifar10("test", root=data_dir, limit=15, cache=cifar_state["cache"]).targets) == 15
    with pytest.raises(ValueError, match=r"^limit=10001 for CIFAR-10 test must be between 1 and 10000"):
        data.cifar10("test", root=data_dir, limit=10_001, cache=cifar_state["cache"])


@pytest.mark.parametrize("normalize", ["imagenet", "none", "raw255"])
def test_cifar10_pixel_values_match_pil(
    data_dir: Path, cifar_test: ImageTensors, cifar_state: dict[str, Any], normalize: str
) -> None:
    ds = data.cifar10("test", root=data_dir, limit=100, normalize=normalize, cache=cifar_state["cache"])  # type: ignore[arg-type]
    k, r, c = 37, 5, 20  # item 37 is source row 3007 (class 3, cat)
    assert int(ds.indices[k]) == 3007 and ds[k][1] == 3
    v = _pil_pixel(data_dir, 3007, r, c).astype(np.float64)
    want = {
        "imagenet": (v / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
        "none": v / 255,
        "raw255": v,
    }[normalize]
    np.testing.assert_allclose(ds[k][0][:, r, c].numpy(), want, rtol=0, atol=1e-6)


def test_cifar10_cache_hit(data_dir: Path, cifar_test: ImageTensors, cifar_state: dict[str, Any]) -> None:
    src = data_dir / "cifar10" / "cifar10_test_jpeg.npz"
    files = sorted(p.name for p in cifar_state["cache"].iterdir())
    assert files == [f"cifar10_test_jpeg-v1-{src.stat().st_size}-{src.stat().st_mtime_ns}.npz"]  # no temp files left
    t = time.perf_counter()
    again = data.cifar10("test", root=data_dir, cache=cifar_state["cache"])
    took = time.perf_counter() - t
    assert took < 1.0, f"cached load took {took:.2f} s (first decode {cifar_state['first_s']:.2f} s)"
    assert torch.equal(again.images, cifar_test.images) and torch.equal(again.targets, cifar_test.targets)
    assert torch.equal(again[1234][0], cifar_test[1234][0])


def test_cifar10_augment(data_dir: Path, cifar_test: ImageTensors, cifar_state: dict[str, Any]) -> None:
    plain = data.cifar10("test", root=data_dir, limit=10, normalize="none", cache=cifar_state["cache"])
    aug = data.cifar10(
        "test",
        root=data_dir,
        limit=10,
        normalize="none",
        augment=True,
        generator=torch.Generator().manual_seed(0),
        cache=cifar_state["cache"],
    )
    base = plain[3][0]
    padded = torch.nn.functional.pad(base, (4, 4, 4, 4))
    crops = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    candidates = crops + [cr.flip(-1) for cr in crops]
    draws = [aug[3][0] for _ in range(20)]
    for x in draws:
        assert x.shape == (3, 32, 32)
        assert any(torch.equal(x, cand) for cand in candidates)  # a zero-padded shift, maybe flipped
    assert any(not torch.equal(x, base) for x in draws)
    aug.generator = torch.Generator().manual_seed(0)
    assert all(torch.equal(aug[3][0], x) for x in draws)  # same seed, same draws


# ---- MNIST ----------------------------------------------------------------------------------------


def test_mnist(data_dir: Path) -> None:
    with np.load(data_dir / "mnist" / "mnist_test.npz") as d:
        x, y = d["x"], d["y"]
    ds = data.mnist("test", root=data_dir)
    assert len(ds) == 10_000
    first, label = ds[0]
    assert label == int(y[0]) == 7
    assert first.shape == (1, 28, 28)
    assert torch.equal(first[0], torch.from_numpy(x[0]).float() / 255)
    big = data.mnist("test", root=data_dir, size=32, channels=3)[0][0]
    assert big.shape == (3, 32, 32) and torch.equal(big[0], big[2]) and 0 <= big.min() and big.max() <= 1
    sub = data.mnist("test", root=data_dir, limit=100)
    assert np.bincount(sub.targets.numpy()).tolist() == [10] * 10
    assert sub.indices.tolist() == sorted(i for c in range(10) for i in np.flatnonzero(y == c)[:10].tolist())


# ---- digits (scikit-learn) ------------------------------------------------------------------------


def test_digits_split() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    target = load_digits().target
    train, test = data.digits("train"), data.digits("test")
    assert (len(train), len(test)) == (1346, 451)
    assert np.bincount(test.targets.numpy()).tolist() == DIGITS_TEST_PER_CLASS
    assert (np.bincount(train.targets.numpy()) + np.bincount(test.targets.numpy())).tolist() == DIGITS_PER_CLASS
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(1797))
    assert train.targets.tolist() == target[train.indices].tolist()
    assert np.array_equal(data.digits("test", seed=0).indices, test.indices)  # same seed, same rows
    assert not np.array_equal(data.digits("test", seed=1).indices, test.indices)
    x, _ = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_digits_pixels_and_registry() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    images = load_digits().images
    ds = data.load_dataset("digits", "test", size=8, channels=1)
    assert isinstance(ds, ImageTensors)
    x, _ = ds[5]
    assert x.shape == (1, 8, 8)
    assert torch.equal(x[0], torch.from_numpy(images[ds.indices[5]] / 16).float())


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ValueError, match=r"^digits needs scikit-learn; pip install scikit-learn$"):
        data.digits("train")


# ---- image folder ---------------------------------------------------------------------------------


def test_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from PIL import Image

    for cls, value in (("cat", 40), ("dog", 200)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (10, 6), (value, value, value)).save(tmp_path / "train" / cls / f"{i}.png")
    ds = data.load_dataset("imagefolder", "train", path=tmp_path, size=16)
    assert len(ds) == 4  # type: ignore[arg-type]
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert torch.allclose(x, torch.full((3, 16, 16), 200 / 255))
