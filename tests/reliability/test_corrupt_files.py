"""Corrupt .cuttree files are refused (never loaded with changed weights, never a traceback).

Every truncation and single-bit flip of two real files is tried on load: the outcome must be a
``FileFormatError`` naming the file, or a model bit-identical to the original (a flip in padding
that changes nothing). Counts are printed with ``-s``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import cuttree
from cuttree.errors import CuttreeError
from cuttree.models import resnet20

CASES = 160  # per file: half truncations, half bit flips (a third of those in the tensor data)


def _files(tmp: Path) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 32, 32),)
    dense = cuttree.prune(resnet20(), x, cuttree.Config(ratio=0.3, latency_runs=0))
    sparse_model = cuttree.sparsify(resnet20(), cuttree.Config(method="unstructured", ratio=0.8)).model
    sparse = cuttree.prune(cuttree.strip(sparse_model), x, cuttree.Config(ratio=0.0, latency_runs=0))
    out = []
    for name, r in (("dense", dense), ("sparse", sparse)):
        p = cuttree.save(r, tmp / f"{name}.cuttree", arch="cuttree.models:resnet20")
        out.append((p, {k: v.clone() for k, v in cuttree.load(p).state_dict().items()}))
    return out


def _data_offset(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")  # safetensors: u64 header length, header, data


def test_every_truncation_and_bit_flip_is_refused_or_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(0)
    tried = refused = harmless = 0
    for path, want in _files(tmp_path):
        blob = path.read_bytes()
        start = _data_offset(blob)
        for i in range(CASES):
            if i % 2 == 0:
                bad = blob[: rng.randrange(0, len(blob))]
            else:
                pos = rng.randrange(start, len(blob)) if i % 3 == 0 else rng.randrange(0, len(blob))
                b = bytearray(blob)
                b[pos] ^= 1 << rng.randrange(8)
                bad = bytes(b)
            victim = tmp_path / "victim.cuttree"
            victim.write_bytes(bad)
            tried += 1
            try:
                model = cuttree.load(victim)
            except CuttreeError as e:
                assert "victim.cuttree" in str(e) and "\n" not in str(e), str(e)
                refused += 1
                continue
            got = model.state_dict()
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), (
                f"case {i} of {path.name}: loaded changed weights"
            )
            harmless += 1
    with capsys.disabled():
        print(
            f"\ncorrupt .cuttree files: {tried} tried, {refused} refused, {harmless} harmless (identical), 0 loaded changed"
        )
    assert tried == 2 * CASES and refused + harmless == tried and refused > 0.9 * tried


def test_a_flip_in_the_weights_is_reported_as_corruption(tmp_path: Path) -> None:
    (path, _), _ = _files(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x10  # the last tensor's bytes: still a valid safetensors file
    path.write_bytes(bytes(blob))
    with pytest.raises(cuttree.FileFormatError, match="checksum does not match its contents"):
        cuttree.load(path)


def test_a_hostile_sparse_header_cannot_make_cuttree_allocate_its_claim(tmp_path: Path) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cuttree.files.cuttree_file import checksum

    path = _files(tmp_path)[1][0]  # the sparse-compressed file
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    sparse = json.loads(meta["sparse"])
    name = next(iter(sparse))
    sparse[name]["shape"] = [1 << 20, 1 << 20, 64]  # 2^46 elements: 256 TiB if believed
    meta["sparse"] = json.dumps(sparse)
    meta["checksum"] = checksum(tensors, meta)  # a hostile file can carry a valid checksum
    hostile = tmp_path / "hostile.cuttree"
    save_file(tensors, str(hostile), metadata=meta)
    with pytest.raises(
        cuttree.FileFormatError, match=r"declares shape \[1048576, 1048576, 64\] .* where the architecture has"
    ):
        cuttree.load(hostile)
