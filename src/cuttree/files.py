"""Atomic file writes and sparse storage, shared by every frontend (no framework imported here)."""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cuttree.errors import FileFormatError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temp path next to ``path``, fsync it, then rename it into place.

    ``tmp`` has ``path``'s name, inside a private temp folder ``.NAME.PID.*.tmp`` in the same
    folder, so that whatever temp files a writer makes of its own (safetensors writes through a
    ``.tmpXXXXXX`` file, Keras through one with its suffix) are inside it too: a writer killed at
    any moment leaves only that folder, which the next write of ``path`` removes. The file gets the
    permissions a plain ``open(path, "w")`` would give (0666 less the umask), not a temp file's 0600.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.txt", lambda tmp: tmp.write_text("done")).read_text()
    'done'
    >>> [p.name for p in folder.iterdir()]
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut, not only a kill
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Raise a one-line ``OSError`` now, before any work, if ``path`` (a file, or with ``folder``
    a run folder) could not be written later: the nearest existing folder on its way must be a
    writable folder, and the path itself must not be a folder (a file) or a file (a folder).

    >>> import tempfile
    >>> check_writable(Path(tempfile.mkdtemp()) / "new" / "model.cuttree").name
    'model.cuttree'
    >>> check_writable("/proc/version/x.cuttree")
    Traceback (most recent call last):
    ...
    NotADirectoryError: cannot write '/proc/version/x.cuttree': '/proc/version' is a file, not a folder; choose another --out
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise IsADirectoryError(f"cannot write '{path}': it is {kind}; choose another --out")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write '{path}': '{parent}' is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write '{path}': the folder '{parent}' is not writable; choose another --out")
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp folders a killed writer of ``path`` left behind (``.NAME.PID.*.tmp`` whose
    process is gone); a live writer's is left alone. Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid_text = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()  # a temp file, as earlier versions wrote them
            removed.append(tmp)
        except OSError:
            pass  # another process cleaned it first
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


# Sparse storage, shared by the torch .cuttree format and the Keras .keras format: a tensor that is
# mostly zeros is stored as a zlib-compressed bit mask (one bit per element) and its zlib-compressed
# non-zero element bytes. Exact: unpacking gives the original bits back.
SPARSE_MIN_ZEROS = 0.3  # arrays with at least this fraction of zeros are stored sparse, where smaller
SPARSE_MIN_SIZE = 1024  # elements; smaller arrays are never worth the bookkeeping


def pack_sparse(keep: np.ndarray, nonzero_bytes: bytes) -> tuple[bytes, bytes]:
    """The compressed ``(mask, values)`` of a flat array: ``keep`` marks its non-zeros, in order.

    >>> m, v = pack_sparse(np.array([True, False, False, True]), b"ab")
    >>> unpack_mask(m, 4, 2, "x").tolist(), inflate(v, 2, "x")
    ([True, False, False, True], b'ab')
    """
    return zlib.compress(np.packbits(keep).tobytes(), 6), zlib.compress(nonzero_bytes, 6)


def inflate(data: bytes, size: int, what: str) -> bytes:
    """``data`` decompressed, refusing anything that is not exactly ``size`` bytes (a corrupt file or a bomb)."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, size + 1)  # bounded: never more than the declared size is allocated
    except zlib.error:
        raw = b""
    if len(raw) != size or d.unconsumed_tail:
        raise FileFormatError(f"compressed array '{what}' does not match its declared size; the file is corrupt")
    return raw


def unpack_mask(mask: bytes, numel: int, nnz: int, what: str) -> np.ndarray:
    """The boolean mask of :func:`pack_sparse`, checked against the declared non-zero count."""
    bits = np.frombuffer(inflate(mask, (numel + 7) // 8, what), dtype=np.uint8)
    keep = np.unpackbits(bits)[:numel].astype(bool)
    if int(keep.sum()) != nnz:
        raise FileFormatError(f"sparse array '{what}': its mask does not match its non-zero count; the file is corrupt")
    return keep
