"""ONNX export of a (pruned) torch model, checked against torch with ONNX Runtime.

The exported graph is the deploy form (:func:`cuttree.deploy.fold_batchnorm`: batch norm folded
into the conv before it, eval-mode semantics), with a dynamic batch dimension. Before the file
is put in place, ONNX Runtime runs it on the example inputs and on a batch of another size, and
its outputs are compared with the original torch model's; a difference above ``atol`` (max abs,
float32) is an error and nothing is written.

>>> import tempfile, torch
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
>>> r = export_onnx(m, (torch.randn(1, 3, 8, 8),), tempfile.mkdtemp() + "/m.onnx")
>>> r.max_abs_diff <= r.atol, r.batch_sizes
(True, (1, 2))
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from cuttree.errors import CuttreeError
from cuttree.files.atomic import atomic_write
from cuttree.frontends.torch.util import as_inputs, eval_mode, to_numpy


@dataclass(frozen=True)
class ExportResult:
    """Where the file went and how closely ONNX Runtime reproduced torch."""

    path: str
    max_abs_diff: float  #: the largest difference over every output and both batch sizes checked
    atol: float
    batch_sizes: tuple[int, ...]
    opset: int
    exporter: str  #: "torchscript" or "dynamo" (torch.onnx's two exporters)
    folded_batchnorm: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    atol: float = 1e-4,
    opset: int = 18,
    fold: bool = True,
) -> ExportResult:
    """Export ``model`` to ``path`` as ONNX (batch dimension dynamic), checked with ONNX Runtime.

    ``example_inputs`` are tensors whose first dimension is the batch. ``fold=False`` exports the
    model as it is, batch norm included.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CuttreeError("ONNX export needs onnx and onnxruntime: pip install 'cuttree[onnx]'") from None
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output '{path}' must end in .onnx")
    inputs = as_inputs(example_inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        raise ValueError(
            "ONNX export needs example inputs that are tensors with a batch dimension, e.g. (1, 3, 224, 224)"
        )
    model = model.cpu().eval()
    inputs = tuple(x.cpu() for x in inputs)
    form = model
    if fold:
        from cuttree.deploy import fold_batchnorm

        form = fold_batchnorm(model, inputs)
    other = tuple(torch.cat([x, x.flip(0) * 0.5]) for x in inputs)  # another batch size, other values
    names = [f"input_{i}" for i in range(len(inputs))]
    data, exporter = onnx_bytes(form, inputs, names, opset)

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # the dynamo exporter names them after the arguments
    if len(names) != len(inputs):
        raise CuttreeError(f"the ONNX graph takes {len(names)} inputs where the model takes {len(inputs)}; not written")
    worst = 0.0
    for batch in (inputs, other):
        want = _torch_outputs(model, batch)
        got = session.run(None, {n: to_numpy(x) for n, x in zip(names, batch, strict=True)})
        if len(got) != len(want):
            raise CuttreeError(
                f"the ONNX graph has {len(got)} outputs where the model returns {len(want)}; not written"
            )
        for w, g in zip(want, got, strict=True):
            if tuple(w.shape) != tuple(g.shape):
                raise CuttreeError(
                    f"ONNX Runtime returned shape {tuple(g.shape)} where torch returns {tuple(w.shape)} "
                    f"(batch {len(batch[0])}); not written"
                )
            worst = max(worst, float(np.max(np.abs(w.astype(np.float64) - g.astype(np.float64)), initial=0.0)))
    if not worst <= atol:
        raise CuttreeError(
            f"ONNX Runtime's outputs differ from torch's by {worst:.3g} (max abs), above atol {atol:g}; "
            f"{path} not written (export with fold=False, or raise atol if the model is numerically touchy)"
        )
    atomic_write(path, lambda p: p.write_bytes(data))
    return ExportResult(
        str(path), worst, atol, (len(inputs[0]), len(other[0])), opset, exporter, fold and form is not model
    )


def _torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with eval_mode(model), torch.no_grad():
        out = model(*inputs)
    return [to_numpy(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], opset: int) -> tuple[bytes, str]:
    """The ONNX bytes from torch.onnx's TorchScript exporter (quick, and what most runtimes
    were tested with), or from its dynamo exporter where the first cannot trace the model."""
    first_error: Exception | None = None
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
        warnings.simplefilter("ignore")
        tmp = Path(d) / "model.onnx"
        try:
            torch.onnx.export(
                model,
                inputs,
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=names,
                dynamic_axes={n: {0: "batch"} for n in names},
            )
            return tmp.read_bytes(), "torchscript"
        except Exception as e:  # the legacy exporter fails on some ops; the dynamo one may not
            first_error = e
        try:
            batch = torch.export.Dim("batch", min=1)
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    model, inputs, dynamo=True, opset_version=opset, dynamic_shapes=[{0: batch} for _ in inputs]
                )
            assert program is not None
            program.save(tmp)
            return tmp.read_bytes(), "dynamo"
        except Exception as e:
            raise CuttreeError(
                f"torch.onnx cannot export this model: {_first_line(first_error)} (TorchScript exporter); "
                f"{_first_line(e)} (dynamo exporter)"
            ) from None


def _first_line(e: BaseException | None) -> str:
    return str(e).strip().splitlines()[0][:300] if e is not None and str(e).strip() else type(e).__name__
