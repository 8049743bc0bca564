"""Files written before cuttree's modules moved into rooms still load, and compute what they did.

``pre_rooms/`` holds a ``.cuttree`` (a CIFAR ResNet-20 pruned at ratio 0.75) and a ``.keras``
(a small functional model pruned at 0.5), written by the code of commit b92ce72 (the last one
before the move), with each model's output on a fixed input as the code of that commit computed it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

import cuttree

HERE = Path(__file__).resolve().parent / "pre_rooms"


def test_a_cuttree_file_from_before_the_move_loads_and_computes_the_same() -> None:
    model = cuttree.load(HERE / "resnet20_pruned.cuttree")
    plan = cuttree.read_metadata(HERE / "resnet20_pruned.cuttree")["plan"]
    assert plan.framework == "torch" and plan.groups[0].name == "conv1" and plan.groups[0].keep == (0, 1, 5, 8)
    assert model.conv1.out_channels == 4  # 16 channels, a quarter kept
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x).numpy()
    np.testing.assert_allclose(got, np.load(HERE / "resnet20_pruned_out.npy"), rtol=1e-5, atol=1e-6)


def test_a_keras_file_from_before_the_move_loads_and_computes_the_same() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    import cuttree.keras as ck

    model = ck.load(HERE / "small_pruned.keras")
    assert model.get_layer("c1").filters == 4 and ck.plan_of(HERE / "small_pruned.keras").framework == "keras"
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    got = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got, np.load(HERE / "small_pruned_out.npy"), rtol=1e-5, atol=1e-6)
