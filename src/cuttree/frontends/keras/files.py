"""Keras model files: ``.keras`` (Keras's own zip) with cuttree's plan and figures inside; atomic writes.

Two storages. The default is a plain ``.keras`` file that any Keras loads by itself; cuttree only
compresses the zip (Keras stores it uncompressed) and adds ``cuttree.json``. With
``sparse_storage=True`` each mostly-zero weight array is stored as a bit mask and its non-zero
values (the codec of :mod:`cuttree.files.atomic`, the same as the torch ``.cuttree`` format), and the
rest of Keras's weights file is renamed ``cuttree.weights.h5``: such a file is about a third
smaller for a 90% sparse model, and only :func:`load` reads it. Keras alone refuses it loudly
("Expected a model.weights.h5 ..."), never loading zeros in place of the missing weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

import cuttree
from cuttree.core.plan import PruningPlan
from cuttree.core.resources import check_memory
from cuttree.core.results import PruneResult
from cuttree.errors import FileFormatError, first_line
from cuttree.files.atomic import atomic_write
from cuttree.files.sparse import SPARSE_MIN_SIZE, SPARSE_MIN_ZEROS, inflate, pack_sparse, unpack_mask
from cuttree.frontends.keras.calibrate import quiet_numpy_copy, to_numpy

META = "cuttree.json"  # the plan and measurements, stored inside the .keras zip beside Keras's own files
WEIGHTS = "model.weights.h5"  # Keras's name for its weights file inside the zip
SPARSE_WEIGHTS = "cuttree.weights.h5"  # the weights file with the sparse arrays taken out
SPARSE_DIR = "cuttree.sparse/"  # one <n>.mask and one <n>.values member per sparse array


def save(result: Any, path: str | os.PathLike[str], *, sparse_storage: bool = False) -> Path:
    """Write a ``.keras`` file (Keras's own format, zip-deflated) with the plan and figures inside; atomic.

    ``keras.saving.load_model`` reads it as any ``.keras`` file, unless ``sparse_storage=True``
    stored its mostly-zero arrays compressed (then only :func:`load` reads it). :func:`read_metadata`
    reads the plan.
    """
    model = result if isinstance(result, keras.Model) else getattr(result, "model", result)  # a result, or a model
    p = Path(path)
    if p.suffix != ".keras":
        raise ValueError(f"'{p}': a Keras model is saved as .keras; use a path ending in .keras")
    meta: dict[str, Any] = {"cuttree": cuttree.__version__, "backend": keras.backend.backend(), "sealed": True}
    if isinstance(result, PruneResult):
        meta |= {"plan": result.plan.to_dict(), "before": result.before.to_dict(), "after": result.after.to_dict()}

    def write(tmp: Path) -> None:
        keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
        try:
            with quiet_numpy_copy():
                model.save(keras_tmp)
            with zipfile.ZipFile(keras_tmp) as src:
                members = {name: src.read(name) for name in src.namelist()}
        finally:
            keras_tmp.unlink(missing_ok=True)
        stored: dict[str, bytes] = {}
        if sparse_storage:
            rest, sparse, stored = _split_sparse(members[WEIGHTS])
            if sparse:
                del members[WEIGHTS]
                members[SPARSE_WEIGHTS] = rest
                meta["sparse"] = sparse
        # Keras stores its zip uncompressed. Compressed, the zeros of a sparse model cost little:
        # bzip2 where most weights are zero (smaller, slower), deflate otherwise; keras reads both.
        method = zipfile.ZIP_BZIP2 if _zero_fraction(model) >= 0.5 else zipfile.ZIP_DEFLATED
        tmp.write_bytes(sealed_zip({**members, **stored, META: json.dumps(meta).encode()}, method, stored=stored))

    return atomic_write(p, write)


def _zero_fraction(model: Any) -> float:
    arrays = [to_numpy(v) for v in model.weights]
    total = sum(a.size for a in arrays)
    return sum(int((a == 0).sum()) for a in arrays) / max(total, 1)


def _split_sparse(weights_h5: bytes) -> tuple[bytes, dict[str, Any], dict[str, bytes]]:
    """Keras's weights file → (the file without its sparse arrays, their metadata, their zip members)."""
    sparse: dict[str, Any] = {}
    members: dict[str, bytes] = {}
    out = io.BytesIO()
    with h5py.File(io.BytesIO(weights_h5), "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(src.attrs)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                dst.require_group(name).attrs.update(obj.attrs)
                return
            a = obj[()]
            if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size >= SPARSE_MIN_SIZE:
                keep = a.reshape(-1) != 0
                nnz = int(keep.sum())
                if nnz <= (1 - SPARSE_MIN_ZEROS) * a.size:
                    mask, values = pack_sparse(keep, np.ascontiguousarray(a.reshape(-1)[keep]).tobytes())
                    if len(mask) + len(values) < a.nbytes:
                        n = len(sparse)
                        sparse[name] = {"shape": list(a.shape), "dtype": a.dtype.str, "nnz": nnz, "member": n}
                        members[f"{SPARSE_DIR}{n}.mask"], members[f"{SPARSE_DIR}{n}.values"] = mask, values
                        return
            dst.create_dataset(name, data=a).attrs.update(obj.attrs)

        src.visititems(visit)
    return out.getvalue(), sparse, members


def _join_sparse(z: zipfile.ZipFile, sparse: dict[str, Any], source: Path) -> bytes:
    """Inverse of :func:`_split_sparse`: Keras's own weights file, bit for bit the same arrays."""
    out = io.BytesIO()
    try:
        rest = z.read(SPARSE_WEIGHTS)
    except KeyError:
        raise FileFormatError(f"'{source}': {SPARSE_WEIGHTS} is missing; the file is corrupt") from None
    # What the header declares, checked against this machine before anything is inflated: a
    # hostile header must not make cuttree allocate what it claims (the torch loader checks the
    # architecture's own shapes; a Keras weights file is matched to layers only by Keras itself).
    try:
        declared = sum(
            math.prod(int(x) for x in info["shape"]) * (np.dtype(str(info["dtype"])).itemsize + 2)
            for info in sparse.values()
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise FileFormatError(f"'{source}': a sparse array's header is malformed; the file is corrupt") from None
    check_memory(
        declared, f"'{source}' (its sparse arrays, as declared)", "the file is hostile or needs a larger machine"
    )
    with h5py.File(io.BytesIO(rest), "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(src.attrs)
        for key in src:
            src.copy(src[key], dst, name=key)
        for name, info in sparse.items():
            try:
                shape = tuple(int(x) for x in info["shape"])
                dtype = np.dtype(str(info["dtype"]))
                nnz, n = int(info["nnz"]), int(info["member"])
                mask, values = z.read(f"{SPARSE_DIR}{n}.mask"), z.read(f"{SPARSE_DIR}{n}.values")
            except (KeyError, TypeError, ValueError):
                raise FileFormatError(f"'{source}': sparse array '{name}' is malformed; the file is corrupt") from None
            if dtype.kind != "f" or nnz < 0 or any(x < 0 for x in shape) or name in dst:
                raise FileFormatError(f"'{source}': sparse array '{name}' has an invalid dtype, shape or name")
            numel = math.prod(shape)
            try:
                keep = unpack_mask(mask, numel, nnz, name)
                nonzero = np.frombuffer(inflate(values, nnz * dtype.itemsize, name), dtype=dtype)
            except FileFormatError as e:
                raise FileFormatError(f"'{source}': {e}") from None
            flat = np.zeros(numel, dtype=dtype)
            flat[keep] = nonzero
            dst.create_dataset(name, data=flat.reshape(shape))
    return out.getvalue()


def load(path: str | os.PathLike[str]) -> Any:
    """The model in a ``.keras`` (safe mode: no Lambda code runs) or legacy ``.h5`` file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file '{p}' does not exist; pass the path of a .keras or .h5 file")
    if p.suffix not in (".keras", ".h5"):
        raise ValueError(f"'{p}' is not a Keras file; cuttree.keras reads .keras and .h5")
    _verify(p)
    sparse = read_metadata(p).get("sparse")
    if not sparse:
        return _load_keras(p, p)
    with tempfile.TemporaryDirectory() as d:
        plain = Path(d) / "model.keras"
        with zipfile.ZipFile(p) as z, zipfile.ZipFile(plain, "w") as dst:
            for name in z.namelist():
                if name != SPARSE_WEIGHTS and not name.startswith(SPARSE_DIR):
                    dst.writestr(name, z.read(name))
            dst.writestr(WEIGHTS, _join_sparse(z, sparse, p))
        return _load_keras(plain, p)


_SEAL_PREFIX = b"cuttree-sha256:"


def sealed_zip(members: dict[str, bytes], method: int, stored: Iterable[str] = ()) -> bytes:
    """A zip of ``members`` (in order; those named in ``stored`` are already compressed), whose
    comment is the SHA-256 of every byte before it: any changed byte of the file is then found,
    the zip's and Keras's own fields included (zip CRCs cover member data only, and Keras's
    reader does not always check them).

    >>> blob = sealed_zip({"a": b"x"}, zipfile.ZIP_DEFLATED)
    >>> _sealed_ok(blob), _sealed_ok(blob[:-1] + b"!")
    (True, False)
    """
    keep = set(stored)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data, compress_type=zipfile.ZIP_STORED if name in keep else None)
        z.comment = _SEAL_PREFIX + b"0" * 64  # the seal's place, filled in once every byte before it is known
    body = buf.getvalue()[:-64]
    return body + hashlib.sha256(body).hexdigest().encode()


def _sealed_ok(blob: bytes) -> bool | None:
    """True if the seal matches, False if it does not, None for a file without one."""
    if blob[len(blob) - 64 - len(_SEAL_PREFIX) : len(blob) - 64] != _SEAL_PREFIX:
        return None
    return blob[len(blob) - 64 :] == hashlib.sha256(blob[: len(blob) - 64]).hexdigest().encode()


def _verify(path: Path) -> None:
    """Refuse a cuttree-written ``.keras`` file with any changed byte (plain Keras files have no seal)."""
    ok = _sealed_ok(path.read_bytes())
    if ok is None and read_metadata(path).get("sealed"):
        ok = False  # written with a seal that is no longer where it was
    if ok is False:
        raise FileFormatError(
            f"'{path}' is corrupt: its SHA-256 seal does not match its contents (a changed bit); use an intact copy"
        )


def _load_keras(file: Path, source: Path) -> Any:
    try:
        return keras.saving.load_model(file, safe_mode=True, compile=False)
    except ValueError as e:
        if "Lambda" in str(e) or "safe_mode" in str(e):
            raise FileFormatError(
                f"'{source}' holds a Lambda layer, whose code cuttree will not run (safe mode); rebuild the model "
                "with built-in layers or a registered custom layer instead of the Lambda"
            ) from None
        raise FileFormatError(f"'{source}' could not be loaded as a Keras model ({first_line(e)})") from None
    except Exception as e:  # a damaged file: Keras, zipfile and h5py raise many types (OSError, KeyError, EOFError…)
        if custom := re.search(r"Could not locate class '([^']+)'", str(e)):
            raise ValueError(
                f"'{source}' uses the custom class '{custom.group(1)}', which is not registered in this process: "
                "cuttree never imports code a file names; import the module that defines it first (in Python before "
                "loading; on the command line with --trust MODULE)"
            ) from None
        raise FileFormatError(
            f"'{source}' is corrupt or not a Keras model ({type(e).__name__}: {first_line(e)[:100]})"
        ) from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What :func:`save` stored beside the model (plan, figures); ``{}`` for a plain Keras file."""
    p = Path(path)
    if p.suffix != ".keras":
        return {}
    try:
        with zipfile.ZipFile(p) as z:
            if META not in z.namelist():
                return {}
            return dict(json.loads(z.read(META)))
    except Exception:  # a damaged zip raises many types (BadZipFile, OSError from bz2, zlib.error, EOFError…)
        raise FileFormatError(f"'{p}' is not a readable .keras file (a damaged zip or {META}); save it again") from None


def plan_of(path: str | os.PathLike[str]) -> PruningPlan | None:
    """The plan stored in a file written by :func:`save`, if any."""
    meta = read_metadata(path)
    return PruningPlan.from_dict(meta["plan"]) if "plan" in meta else None
