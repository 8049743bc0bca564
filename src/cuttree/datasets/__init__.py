"""Datasets: loaders for images (``images``), segmentation pairs (``segmentation``) and sentence
pairs (``text``). They read local files and know nothing of pruning.
"""
