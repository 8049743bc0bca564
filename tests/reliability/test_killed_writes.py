"""A writer killed mid-save leaves the previous complete file, and its temp file is cleaned next time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import cuttree
from cuttree.files.atomic import atomic_write, remove_stale_temps
from cuttree.models import resnet20

WRITER = """
import sys, time
from pathlib import Path
from cuttree.files.atomic import atomic_write

def slow(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a file")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

atomic_write(Path(sys.argv[1]), slow)
"""


def _kill_mid_write(path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def test_sigkill_during_save_keeps_the_old_file_and_the_next_save_cleans_up(tmp_path: Path) -> None:
    x = (torch.randn(1, 3, 32, 32),)
    r = cuttree.prune(resnet20(), x, cuttree.Config(ratio=0.3, latency_runs=0))
    path = cuttree.save(r, tmp_path / "m.cuttree", arch="cuttree.models:resnet20")
    before = path.read_bytes()
    for _ in range(3):
        _kill_mid_write(path)
    assert path.read_bytes() == before  # the previous complete file, untouched
    # each writer cleaned the temp file of the one killed before it: only the last one's is left
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(stale) == 1 and stale[0].startswith(".m.cuttree.") and (tmp_path / stale[0]).is_dir()
    cuttree.save(r, path, arch="cuttree.models:resnet20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cuttree"]
    with torch.no_grad():
        assert torch.equal(cuttree.load(path)(*x), r.model.eval()(*x))


def test_a_live_writers_temp_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    seen: list[list[Path]] = []
    atomic_write(path, lambda tmp: (tmp.write_text("{}"), seen.append(remove_stale_temps(path))))
    assert seen == [[]] and path.read_text() == "{}"  # its own temp file, mid-write, was not removed
    (tmp_path / ".out.json.999999999.abc.tmp").write_text("x")  # no such process
    time.sleep(0.01)
    assert [p.name for p in remove_stale_temps(path)] == [".out.json.999999999.abc.tmp"]
