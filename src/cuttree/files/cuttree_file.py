"""Safe files: a ``.cuttree`` file is a safetensors file whose metadata carries the plan.

Metadata keys: ``cuttree_format`` (version), ``plan`` (JSON), ``arch`` (``module:callable``),
``arch_kwargs`` (JSON), ``versions`` (JSON). Loading rebuilds the architecture, re-applies the
plan and loads the weights: no pickle anywhere. Writes are atomic (a temp file in the same
folder, fsync, rename), so a failed write never leaves a partial file.

Building an architecture from a file means importing and calling what the file names, so only
callables under trusted module prefixes are built (``torchvision.models``, ``cuttree.models``,
plus ``trusted`` given by the caller); anything else needs ``build=`` from the caller.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cuttree.core.plan import PruningPlan
from cuttree.core.resources import check_memory
from cuttree.errors import CuttreeError, FileFormatError, first_line
from cuttree.files.atomic import atomic_write
from cuttree.files.sparse import SPARSE_MIN_SIZE, SPARSE_MIN_ZEROS, inflate, pack_sparse, unpack_mask
from cuttree.files.trust import build_model, parse_arch
from cuttree.frontends.torch.depth import stack_shapes
from cuttree.frontends.torch.fold import as_plain
from cuttree.frontends.torch.surgery import apply_plan
from cuttree.frontends.torch.util import is_sharded, shard_like, state_dict_for_save, tensor_names, to_numpy

FORMAT_VERSION = "1"


def compress(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Sparse tensors → a zlib-compressed bitmask and zlib-compressed non-zero values (uint8 tensors).

    Only where that is smaller than the dense bytes; returns the tensors to write and the
    ``sparse`` metadata (shape, dtype, non-zero count) needed to rebuild them exactly.
    """
    out: dict[str, torch.Tensor] = {}
    sparse: dict[str, Any] = {}
    for k, v in state.items():
        if v.is_floating_point() and v.numel() >= SPARSE_MIN_SIZE:
            flat = v.detach().cpu().contiguous().reshape(-1)
            keep = flat != 0
            nnz = int(keep.sum())
            if nnz <= (1 - SPARSE_MIN_ZEROS) * flat.numel():
                mask_z, vals_z = pack_sparse(to_numpy(keep), to_numpy(flat[keep].view(torch.uint8)).tobytes())
                if len(mask_z) + len(vals_z) < flat.numel() * flat.element_size():
                    out[f"{k}::mask"] = torch.frombuffer(bytearray(mask_z), dtype=torch.uint8)
                    out[f"{k}::values"] = torch.frombuffer(bytearray(vals_z), dtype=torch.uint8)
                    sparse[k] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "nnz": nnz}
                    continue
        out[k] = v
    return out, sparse


def decompress(
    tensors: dict[str, torch.Tensor],
    sparse: dict[str, Any],
    source: str,
    expected: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compress`: the exact original tensors.

    With ``expected`` (the architecture's state dict), each sparse tensor's declared name, shape
    and dtype are checked against it *before* anything is allocated: a small compressed mask must
    not make cuttree allocate whatever size a hostile header claims.
    """
    out = {k: v for k, v in tensors.items() if "::" not in k}
    for k, info in sparse.items():
        if not isinstance(info, dict) or set(info) != {"shape", "dtype", "nnz"}:
            raise FileFormatError(f"'{source}': sparse tensor '{k}' has a malformed header; the file is corrupt")
        try:
            shape = [int(x) for x in info["shape"]]
            dtype = getattr(torch, str(info["dtype"]))
            nnz = int(info["nnz"])
            mask_t, vals_t = tensors[f"{k}::mask"], tensors[f"{k}::values"]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise FileFormatError(f"'{source}': sparse tensor '{k}' is malformed; the file is corrupt") from None
        if not isinstance(dtype, torch.dtype) or nnz < 0 or any(x < 0 for x in shape):
            raise FileFormatError(f"'{source}': sparse tensor '{k}' has an invalid dtype or shape")
        if expected is not None:
            want = expected.get(k)
            if want is None or list(want.shape) != shape or want.dtype != dtype or nnz > want.numel():
                raise FileFormatError(
                    f"'{source}': sparse tensor '{k}' declares shape {shape} ({info['dtype']}) where the architecture "
                    f"has {list(want.shape) if want is not None else 'no such tensor'}; the file is corrupt or not "
                    "made for this architecture"
                )
        numel = math.prod(shape)
        try:
            keep = torch.from_numpy(unpack_mask(to_numpy(mask_t).tobytes(), numel, nnz, k))
            elem = torch.empty(0, dtype=dtype).element_size()
            vals_raw = inflate(to_numpy(vals_t).tobytes(), nnz * elem, k)
        except FileFormatError as e:
            raise FileFormatError(f"'{source}': {e}") from None
        # an all-zero tensor has no values (frombuffer refuses an empty buffer)
        vals = (
            torch.frombuffer(bytearray(vals_raw), dtype=torch.uint8).view(dtype)
            if vals_raw
            else torch.empty(0, dtype=dtype)
        )
        flat = torch.zeros(numel, dtype=dtype)
        flat[keep] = vals
        out[k] = flat.reshape(shape)
    return out


def _versions() -> dict[str, str]:
    import cuttree

    return {"cuttree": cuttree.__version__, "torch": torch.__version__}


def save(
    result: Any,
    path: str | Path,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    plan: PruningPlan | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a pruned model (a ``PruneResult``, a ``SparsifyResult``, or a module with ``plan=``)
    as a ``.cuttree`` file; zeroed weights are stored compressed (:mod:`cuttree.files.sparse`)."""
    from safetensors.torch import save_file

    model = result if isinstance(result, nn.Module) else getattr(result, "model", result)  # HF models have .model
    plan = plan if plan is not None else getattr(result, "plan", None)
    if plan is None and hasattr(result, "masks"):  # a SparsifyResult: no channel removed
        plan = PruningPlan(groups=())
    if not isinstance(model, nn.Module) or plan is None:
        raise TypeError("save() takes a PruneResult, a SparsifyResult, or a module together with plan=")
    parse_arch(arch)
    arch_kwargs = {k: v for k, v in (arch_kwargs or {}).items() if k not in DOWNLOAD_KWARGS}  # the file has weights
    meta = {
        "cuttree_format": FORMAT_VERSION,
        "plan": json.dumps(plan.to_dict(), separators=(",", ":")),
        "arch": arch,
        "arch_kwargs": json.dumps(arch_kwargs or {}),
        "versions": json.dumps(_versions()),
    }
    for k in ("before", "after"):
        if hasattr(result, k):
            meta[k] = json.dumps(getattr(result, k).to_dict())
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors, sparse = compress(state_dict_for_save(model))
    if sparse:
        meta["sparse"] = json.dumps(sparse)
    meta["checksum"] = checksum(tensors, meta)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 of every stored tensor (name, dtype, shape, bytes) and every metadata entry, so a
    flipped bit anywhere in the file's content is found (safetensors itself checks no data).

    >>> checksum({"w": torch.zeros(2)}, {"arch": "m:f"}) == checksum({"w": torch.zeros(2)}, {"arch": "m:f"})
    True
    >>> checksum({"w": torch.zeros(2)}, {}) == checksum({"w": torch.tensor([0.0, 1e-45])}, {})
    False
    """
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{list(v.shape)}|".encode())
        h.update(to_numpy(v.reshape(-1).view(torch.uint8)).tobytes())
    for k in sorted(meta):
        if k != "checksum":
            h.update(f"{k}={meta[k]}|".encode())
    return "sha256:" + h.hexdigest()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The parsed metadata of a ``.cuttree`` file (plan, arch, measurements), validated."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"'{p}' does not exist; pass the path of a .cuttree file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a bad header
        raise FileFormatError(
            f"'{p}' is not a cuttree file (not a valid safetensors file: {type(e).__name__}); pass a file written by cuttree"
        ) from None
    if meta.get("cuttree_format") != FORMAT_VERSION:
        raise FileFormatError(
            f"'{p}' is not a cuttree file (metadata cuttree_format={meta.get('cuttree_format')!r}, expected "
            f"'{FORMAT_VERSION}'); pass a file written by `cuttree prune` or cuttree.save"
        )
    out: dict[str, Any] = {"arch": meta.get("arch", "")}
    for k in ("plan", "arch_kwargs", "versions", "before", "after", "extra", "sparse"):
        if k in meta:
            try:
                out[k] = json.loads(meta[k])
            except json.JSONDecodeError:
                raise FileFormatError(f"'{p}': metadata '{k}' is not valid JSON; the file is corrupt") from None
    if "plan" not in out:
        raise FileFormatError(f"'{p}': no plan in the metadata; the file is corrupt")
    try:
        out["plan"] = PruningPlan.from_dict(out["plan"])
    except FileFormatError as e:
        raise FileFormatError(f"'{p}': {e}") from None
    return out


def load(
    path: str | Path,
    build: Callable[[], nn.Module] | None = None,
    trusted: Iterable[str] = (),
) -> nn.Module:
    """Rebuild the pruned model stored in ``path`` (weights loaded, eval mode)."""
    from safetensors.torch import load_file

    read_metadata(path)  # a file that is not a cuttree file at all is named as such first
    # the stored tensors, the rebuilt model and its dense copies of sparse tensors: about 3× the file
    check_memory(3 * Path(path).stat().st_size, f"loading '{path}'", "free memory or load it on a larger machine")
    try:
        stored = load_file(str(path))
    except Exception as e:  # a truncated or damaged body raises several types
        raise FileFormatError(f"'{path}' is corrupt: its tensors cannot be read ({type(e).__name__})") from None
    verify(path, stored)  # before anything in the file is used
    meta = read_metadata(path)
    model = build() if build is not None else build_from_file(meta, path, trusted)
    try:
        as_plain(model, meta["plan"].folded)  # the file holds the folded weights
    except AttributeError:
        raise FileFormatError(
            f"'{path}': its plan folds layers {list(meta['plan'].folded)[:3]}, which this architecture does not all "
            "have; build the architecture the file was saved from"
        ) from None
    _check_plan(model, meta["plan"], path)
    try:
        apply_plan(model, meta["plan"])
    except CuttreeError as e:  # the plan names tensors or sizes this architecture does not have
        raise FileFormatError(f"'{path}': its plan does not fit the architecture it names: {e}") from None
    state = decompress(stored, meta.get("sparse", {}), str(path), expected=model.state_dict())
    load_state(model, state, str(path))
    return model.eval()


# Builder arguments that fetch weights from the network; a file brings its own weights.
DOWNLOAD_KWARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def build_from_file(meta: dict[str, Any], path: str | Path, trusted: Iterable[str] = ()) -> nn.Module:
    """The dense architecture a file names (:func:`read_metadata`), built under the same rules as :func:`load`."""
    kwargs = meta.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise FileFormatError(f"'{path}': arch_kwargs is {type(kwargs).__name__}, not a mapping; the file is corrupt")
    fetch = [k for k in DOWNLOAD_KWARGS if kwargs.get(k) not in (None, False)]
    if fetch:
        raise FileFormatError(
            f"'{path}': arch_kwargs {fetch[0]}={kwargs[fetch[0]]!r} would download weights while loading; a .cuttree "
            "file carries its own weights, so cuttree never writes this: the file was altered"
        )
    try:
        return build_model(meta["arch"], kwargs, trusted)
    except FileFormatError as e:
        raise FileFormatError(f"'{path}': {e}") from None
    except (ValueError, TypeError, RuntimeError) as e:  # a bad name, or arguments the builder refuses
        first = first_line(e).rsplit("; ", 1)[0]  # its own fix hint dropped
        raise FileFormatError(
            f"'{path}': the architecture it names cannot be built ({first}); install what it needs or use an intact file"
        ) from None


def _check_plan(model: nn.Module, plan: PruningPlan, path: str | Path) -> None:
    """A plan read from a file must be one cuttree could have made for this model: its recorded
    config valid, and the dense shape it records for each tensor it prunes (and only those) the
    model's."""
    from cuttree.config import Config

    try:
        if plan.groups or plan.config:  # an empty plan without a config is a sparsified model's (save())
            Config(**plan.config)
    except (ValueError, TypeError) as e:
        raise FileFormatError(f"'{path}': the config its plan records is invalid ({e}); the file is corrupt") from None
    pruned = {m.tensor for g in plan.groups for m in g.members}
    extra = sorted(set(plan.shapes) - pruned)
    if extra:
        raise FileFormatError(f"'{path}': its plan records tensor '{extra[0]}', which none of its groups prunes")
    have = {
        n: tuple(t.shape)
        for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    }
    have.update(stack_shapes(model, plan))  # a stack of decoder layers whose blocks the plan removes
    for name, shape in plan.shapes.items():
        if have.get(name) != tuple(shape):
            raise FileFormatError(
                f"'{path}': its plan was made for tensor '{name}' of shape {list(shape)}, the architecture has "
                f"{list(have[name]) if name in have else 'no such tensor'}; build the architecture the file was saved from"
            )


def verify(path: str | Path, stored: dict[str, torch.Tensor]) -> None:
    """Refuse a file whose tensors or metadata are not what was written (:func:`checksum`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    want = raw.get("checksum")
    if want is None:
        return  # written before files carried a checksum
    if checksum(stored, raw) != want:
        raise FileFormatError(
            f"'{path}' is corrupt: its checksum does not match its contents (a changed bit in the weights or "
            "metadata); use an intact copy"
        )


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly (tensors stored once for shared weights are fine), with clear errors."""
    expected = model.state_dict()
    # Checkpoints written by older PyTorch versions lack BN's step counter; it does not affect outputs.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    # A tensor shared by several modules is stored once; its other names are aliases, not gaps.
    first = tensor_names(model)
    stored = {first[k] for k in state if k in first}
    aliased = {k for k in missing if first[k] in stored}
    unexpected = [k for k in state if k not in expected]
    if unexpected or set(missing) - aliased:
        bad = unexpected[:1] or sorted(set(missing) - aliased)[:1]
        raise FileFormatError(
            f"'{source}': tensor '{bad[0]}' does not match the architecture ({len(unexpected)} unexpected, "
            f"{len(set(missing) - aliased)} missing); build the architecture the file was saved from"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise FileFormatError(
                f"'{source}': tensor '{k}' has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}; "
                "build the architecture the file was saved from"
            )
    if any(is_sharded(v) for v in expected.values()):  # FSDP2: each process keeps its shard of the whole tensor
        state = {k: shard_like(v, expected[k]) for k, v in state.items()}
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``.safetensors`` or ``.pt``/``.pth`` state dict (the latter with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file '{p}' does not exist; pass the path of a .safetensors or .pt file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as e:  # a bad header raises several types
            raise FileFormatError(f"weights file '{p}' is not a valid safetensors file ({type(e).__name__})") from None
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's business
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled code with UnpicklingError and others
            first = first_line(e)[:160]
            raise FileFormatError(
                f"weights file '{p}' is refused: not a plain state dict ({first}); cuttree never unpickles code — "
                "convert it to .safetensors"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FileFormatError(f"weights file '{p}' does not hold a state dict of tensors")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    else:
        raise ValueError(f"weights file '{p}' has suffix '{p.suffix}'; use .safetensors, .pt or .pth")
    load_state(model, state, str(p))
