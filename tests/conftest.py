"""Shared fixtures: the real-data folder (skipped with a reason where it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CUTTREE_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def data_dir() -> Path:
    if not (DATA / "weights").is_dir():
        pytest.skip(f"real data folder {DATA} is absent (set CUTTREE_DATA to the shared data folder)")
    return DATA
