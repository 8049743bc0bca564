"""Segmentation datasets: ``(x, y)`` pairs of a float32 CHW image and an int64 label map — CamVid
(as the shared data folder holds it) and any folder of images with label maps beside them.

>>> CAMVID_CLASSES[CAMVID_VOID - 1], CAMVID_VOID
('Bicyclist', 11)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cuttree.datasets.images import check_choice, data_root, register_dataset

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_VOID = 11


class SegmentationPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images (uint8 N×3×H×W) and label maps (uint8 N×H×W); items are float 0–255 images (or
    normalised when ``mean``/``std`` are given) and int64 label maps."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        flip: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        self.images, self.labels, self.classes, self.flip = images, labels, list(classes), flip
        self._mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self._std = None if std is None else torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.images[i].float(), self.labels[i].long()
        if self.flip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean) / self._std
        return x, y


def _pairs_from_folders(
    img_dir: Path, lab_dir: Path, size: tuple[int, int] | None, limit: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"{what} folder '{d}' does not exist; set CUTTREE_DATA to the shared data folder or pass root="
            )
    stems = sorted(p.stem for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    labels = {p.stem: p for p in lab_dir.iterdir() if p.suffix.lower() == ".png"}
    missing = [s for s in stems if s not in labels]
    if missing:
        raise FileNotFoundError(
            f"{what}: no label map for image '{missing[0]}' in '{lab_dir}'; pair every image with a PNG mask"
        )
    xs, ys = [], []
    for s in stems:
        img: Image.Image = Image.open(next(img_dir.glob(f"{s}.*"))).convert("RGB")
        lab: Image.Image = Image.open(labels[s])
        if size is not None:
            img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
            lab = lab.resize((size[1], size[0]), Image.Resampling.NEAREST)
        xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        ys.append(torch.from_numpy(np.asarray(lab).copy()))
    return torch.stack(xs), torch.stack(ys)


@register_dataset("camvid")
def camvid(
    split: str,
    root: str | Path | None = None,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    flip: bool = False,
) -> SegmentationPairs:
    """CamVid (367 train / 101 val / 233 test, 360×480): float 0–255 images (what the ENet
    checkpoint expects) and label maps with 11 = void (``finetune.ignore_index: 11``).
    ``size`` (H, W) resizes both with nearest neighbour; ``flip`` mirrors pairs at random."""
    check_choice("split", split, ("train", "val", "test"))
    base = Path(root) if root is not None else data_root() / "camvid"
    x, y = _pairs_from_folders(base / split, base / f"{split}annot", size, limit, "CamVid")
    return SegmentationPairs(x, y, CAMVID_CLASSES, flip=flip)


@register_dataset("segfolder")
def segmentation_folder(
    split: str, path: str | Path, size: tuple[int, int] | None = None, limit: int | None = None
) -> SegmentationPairs:
    """A user's image/mask folder pair: ``PATH/<split>/`` images and ``PATH/<split>annot/`` PNG masks
    (one class index per pixel, same file stem)."""
    base = Path(path)
    x, y = _pairs_from_folders(base / split, base / f"{split}annot", size, limit, "segmentation data")
    n = int(y.max()) + 1 if y.numel() else 0
    return SegmentationPairs(x, y, [str(i) for i in range(n)])
