"""Hostile and corrupt Keras files are refused without running their code: a generated corpus.

Lambda layers (their Python code would run on load) in several places; every truncation and bit
flip of cuttree-written ``.keras`` files, dense and sparse storage (any changed byte is found by
the SHA-256 seal cuttree writes into the zip's comment; Keras and h5py check nothing); sparse
headers that declare arrays too large to allocate. Each must be refused with a one-line
``FileFormatError`` or ``ResourceError``, or load a model whose weights are identical. Counts are
printed with ``-s``.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cuttree  # noqa: E402
import cuttree.keras as ck  # noqa: E402
from cuttree.errors import CuttreeError  # noqa: E402
from cuttree.frontends.keras.files import sealed_zip  # noqa: E402

SCALE = int(os.environ.get("CUTTREE_FUZZ", "1"))
COUNTS: Counter[str] = Counter()


def _lambda_models() -> list[Any]:
    def seq(*layers: Any) -> Any:
        return keras.Sequential([keras.Input((6,)), *layers])

    inp = keras.Input((6,))
    a, b = keras.layers.Dense(4)(inp), keras.layers.Dense(4)(inp)
    branchy = keras.Model(inp, keras.layers.Lambda(lambda t: t[0] * t[1])([a, b]))
    inner = seq(keras.layers.Lambda(lambda t: t + 1))
    return [
        seq(keras.layers.Lambda(lambda t: t * 2)),
        seq(keras.layers.Dense(3), keras.layers.Lambda(lambda t: t - 1)),
        seq(keras.layers.Lambda(lambda t: t), keras.layers.Dense(3)),
        seq(keras.layers.Lambda(lambda t: keras.ops.relu(t), output_shape=(6,))),
        branchy,
        seq(inner, keras.layers.Dense(2)),  # a Lambda inside a nested model
    ]


def test_lambda_layers_are_refused_without_running_their_code(tmp_path: Path) -> None:
    from cuttree.cli.main import main

    for i, model in enumerate(_lambda_models()):
        path = tmp_path / f"lambda{i}.keras"
        model.save(path)
        for how in ("api", "cli prune"):
            COUNTS["Lambda layer"] += 1
            if how == "api":
                with pytest.raises(cuttree.FileFormatError, match="Lambda") as e:
                    ck.load(path)
                assert "\n" not in str(e.value)
            else:
                out = tmp_path / "out.keras"
                assert main(["prune", "--model", str(path), "--set", "ratio=0.5", "--out", str(out)]) == 4
                assert not out.exists()


def _net() -> Any:
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="c1")(inp)
    x = keras.layers.Flatten()(keras.layers.Conv2D(32, 3, name="c2")(x))
    x = keras.layers.Dense(16, name="d")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))


def _weights(model: Any) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(w.value)) for w in model.weights]


@pytest.mark.parametrize("storage", ["structured", "sparse"])
def test_every_truncation_and_bit_flip_is_refused_or_harmless(tmp_path: Path, storage: str) -> None:
    keras.utils.set_random_seed(0)
    if storage == "sparse":
        cfg = cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0)
    else:
        cfg = cuttree.Config(ratio=0.5, latency_runs=0)
    good = ck.save(ck.prune(_net(), cfg), tmp_path / "good.keras", sparse_storage=storage == "sparse")
    want = _weights(ck.load(good))
    blob = good.read_bytes()
    rng = random.Random(storage)
    victim = tmp_path / "victim.keras"
    for i in range(100 * SCALE):
        if i % 2 == 0:
            bad = blob[: rng.randrange(0, len(blob))]
        else:
            b = bytearray(blob)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            bad = bytes(b)
        victim.write_bytes(bad)
        COUNTS[f"truncated or bit-flipped .keras ({storage})"] += 1
        try:
            got = _weights(ck.load(victim))
        except (cuttree.FileFormatError, cuttree.ResourceError) as e:
            assert "victim.keras" in str(e) and "\n" not in str(e), str(e)
            COUNTS["refused"] += 1
            continue
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), (
            f"case {i}: loaded changed weights"
        )
        COUNTS["harmless"] += 1


def test_sparse_headers_that_declare_huge_arrays_are_refused_before_allocating(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    r = ck.prune(_net(), cuttree.Config(method="unstructured", ratio=0.9, latency_runs=0))
    good = ck.save(r, tmp_path / "good.keras", sparse_storage=True)
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["cuttree.json"])
    name = next(iter(meta["sparse"]))
    for shape in ([1 << 20, 1 << 20, 64], [1 << 40], [1 << 31, 1 << 31], [-1, 4], ["x"], 7, None):
        hostile = json.loads(members["cuttree.json"])
        hostile["sparse"][name]["shape"] = shape
        path = tmp_path / "hostile.keras"  # with a valid seal: anyone can compute one
        path.write_bytes(sealed_zip({**members, "cuttree.json": json.dumps(hostile).encode()}, zipfile.ZIP_DEFLATED))
        COUNTS["hostile sparse header (.keras)"] += 1
        with pytest.raises(CuttreeError) as e:
            ck.load(path)
        assert isinstance(e.value, (cuttree.FileFormatError, cuttree.ResourceError)) and "\n" not in str(e.value)


def test_zz_print_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = {k: COUNTS.pop(k, 0) for k in ("refused", "harmless")}
    with capsys.disabled():
        print(f"\nhostile Keras files: {sum(COUNTS.values())} tried ({dict(COUNTS)}); {outcomes} of the damaged ones")
    assert sum(COUNTS.values()) >= 12 + 200 * SCALE + 7
