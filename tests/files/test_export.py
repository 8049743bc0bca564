"""ONNX export: the deploy form, checked against torch with ONNX Runtime, nothing written on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import cuttree
from cuttree.errors import CuttreeError
from topologies import TOPOLOGIES

pytest.importorskip("onnxruntime")
from cuttree.files.onnx import export_onnx


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_pruned_zoo_model_exports_within_1e_4(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, x = TOPOLOGIES[name]()
    pruned = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0)).model
    r = export_onnx(pruned, x, tmp_path / "m.onnx")
    assert r.max_abs_diff <= 1e-4 and r.batch_sizes == (len(x[0]), 2 * len(x[0]))
    # an independent check of the file as written: a third batch size, through a fresh session
    s = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x3 = tuple(torch.randn(3, *t.shape[1:]) for t in x)
    got = s.run(None, {i.name: t.numpy() for i, t in zip(s.get_inputs(), x3, strict=True)})
    with torch.no_grad():
        want = tree_flatten(pruned.eval()(*x3))[0]
    for w, g in zip(want, got, strict=True):
        assert np.abs(w.numpy() - g).max() <= 1e-4


class BatchDependent(nn.Module):
    """Python control flow on the batch size: a trace bakes in the branch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 1.0 if x.shape[0] > 1 else y


def test_a_graph_that_disagrees_with_torch_is_refused_and_not_written(tmp_path: Path) -> None:
    with pytest.raises(CuttreeError, match=r"differ from torch's by 1 \(max abs\), above atol 0.0001; .* not written"):
        export_onnx(BatchDependent(), (torch.randn(1, 3, 8, 8),), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_dynamo_exporter_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.onnx.export

    def no_torchscript(*args: object, **kw: object) -> object:
        if kw.get("dynamo") is False:
            raise RuntimeError("unsupported op for the TorchScript exporter")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    model, x = TOPOLOGIES["residual"]()
    r = export_onnx(model, x, tmp_path / "m.onnx")
    assert r.exporter == "dynamo" and r.max_abs_diff <= 1e-4 and (tmp_path / "m.onnx").stat().st_size > 1000


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    model, x = TOPOLOGIES["residual"]()
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(model, x, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="tensors with a batch dimension"):
        export_onnx(model, (), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_reads_the_input_shape_from_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.cli.main import main

    out = tmp_path / "r.cuttree"
    assert main(["prune", "--arch", "cuttree.models:resnet20", "--input-shape", "1,3,32,32", "--set", "ratio=0.5",
                 "--set", "latency_runs=0", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(out), "--onnx", str(tmp_path / "r.onnx")]) == 0
    printed = capsys.readouterr()
    assert "ONNX Runtime matches torch within" in printed.out and "batch sizes 1 and 2; tolerance 0.0001" in printed.out
    assert "export: 2/2 (100%)" in printed.err
    assert (tmp_path / "r.onnx").stat().st_size > 100_000
    # exported, but not within tolerance: exit 9
    assert main(["export", str(out), "--onnx", str(tmp_path / "bad.onnx"), "--atol", "0"]) == 9
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("cuttree: error: ONNX Runtime's outputs differ") and "not written" in err
    assert not (tmp_path / "bad.onnx").exists()
    assert main(["export", str(out)]) == 2 and "--onnx" in capsys.readouterr().err
