"""Atomic file writes, shared by every frontend (no framework imported here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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
