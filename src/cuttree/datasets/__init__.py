"""Datasets: loaders for images (``images``), segmentation pairs (``segmentation``) and sentence
pairs (``text``). They read local files and know nothing of pruning.

Every loader registers itself in :data:`cuttree.datasets.images.DATASETS` when its module is
imported; importing this package imports both image modules, so the table is complete.
"""

from cuttree.datasets import images, segmentation

__all__ = ["images", "segmentation"]
