"""Nothing is lost: jobs SIGKILLed at random moments while saving or fine-tuning.

A child process (forked from a ``forkserver`` that imported torch and cuttree once) saves or
fine-tunes; the test kills it after a random delay, checks what is on disk, and starts the next
life. Saving: the file is always one of the complete models written, never a torn one, and the
temp files killed writers leave are removed by the next save. Fine-tuning (a checkpoint every
step): the checkpoint is always intact, and the run resumed after every kill ends with exactly
the weights of an uninterrupted run. ``make test`` tries 12 kill points of each kind,
``CUTTREE_FUZZ=2`` (``make test-slow``) 120. Counts are printed with ``-s``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import killers
import pytest
import torch
from safetensors.torch import load_file

import cuttree
from cuttree.models import resnet20
from cuttree.recover.checkpoints import read_checkpoint

KILLS = 12 if int(os.environ.get("CUTTREE_FUZZ", "1")) < 2 else 120
CTX = multiprocessing.get_context("forkserver")
# What the jobs import, loaded once in the forkserver (``killers`` itself is not on its path, and
# is light); torch.optim imports torch._dynamo on first use, 2 s a life if it were not preloaded.
CTX.set_forkserver_preload(["torch", "torch._dynamo", "safetensors.torch", "cuttree.recover.train", "cuttree.models"])


def _life(target: Callable[..., None], args: tuple[Any, ...], kill_after: float | None) -> int | None:
    """Run ``target(*args, ready)`` in a child; SIGKILL it ``kill_after`` seconds after it is
    ready (None: let it finish). Returns its PID when it was killed, None when it finished first."""
    ready = CTX.Event()
    p = CTX.Process(target=target, args=(*args, ready))
    p.start()
    assert ready.wait(120), "the child never got ready"
    p.join(kill_after)
    if p.exitcode is None:
        p.kill()  # SIGKILL: no handler, no cleanup, no flush
        p.join()
        return p.pid
    assert p.exitcode == 0, f"the child failed with exit code {p.exitcode}"
    return None


def _its_temp(folder: Path, pid: int) -> bool:
    """Did the writer with ``pid`` leave a temp folder (killed mid-write)?  A life killed before it
    made its run folder left nothing."""
    return folder.is_dir() and any(p.name.endswith(".tmp") and f".{pid}." in p.name for p in folder.iterdir())


def _state(path: Path) -> dict[str, torch.Tensor]:
    return cuttree.load(path).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_save_killed_at_random_moments_leaves_a_complete_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = (torch.randn(1, 3, 32, 32),)
    files = []
    for ratio in (0.3, 0.6):
        r = cuttree.prune(resnet20(), x, cuttree.Config(ratio=ratio, latency_runs=0))
        files.append(cuttree.save(r, tmp_path / f"src{ratio}.cuttree", arch=killers.ARCH))
    states = [_state(f) for f in files]
    target = tmp_path / "out" / "m.cuttree"
    target.parent.mkdir()
    target.write_bytes(files[0].read_bytes())
    rng = random.Random(0)
    seen = [0, 0]
    mid_write = 0
    for _ in range(KILLS):
        pid = _life(killers.save_forever, ([str(f) for f in files], str(target)), rng.uniform(0.0, 0.4))
        assert pid is not None
        got = _state(target)  # a torn or mixed file would fail its checksum here
        which = [i for i, s in enumerate(states) if _same(got, s)]
        assert len(which) == 1, "the file after a kill is neither of the models written"
        seen[which[0]] += 1
        temps = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) <= 1  # each writer removes the one its killed predecessor left
        mid_write += _its_temp(target.parent, pid)
    cuttree.save(
        cuttree.load(files[1]),
        target,
        arch=killers.ARCH,
        plan=cuttree.files.cuttree_file.read_metadata(files[1])["plan"],
    )
    assert [p.name for p in target.parent.iterdir()] == ["m.cuttree"]  # the stale temp files are gone
    with capsys.disabled():
        print(
            f"\nkill points during save: {KILLS} tried ({mid_write} mid-write, leaving a temp folder), 0 corrupt "
            f"files (the old model {seen[0]}×, the new one {seen[1]}×); the temp folders removed by the next save"
        )


def test_fine_tuning_killed_at_random_moments_resumes_to_the_same_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = 40 * KILLS  # each life makes some 0–30 steps: the last one still has work left
    ref = tmp_path / "uninterrupted"
    assert _life(killers.train, (str(ref), steps), None) is None
    run = tmp_path / "killed"
    rng = random.Random(1)
    kills = mid_write = 0
    progress = [0]
    while pid := _life(killers.train, (str(run), steps), rng.uniform(0.0, 0.15) if kills < KILLS else None):
        kills += 1
        mid_write += _its_temp(run, pid)
        if (run / "checkpoint.safetensors").is_file():
            state, _ = read_checkpoint(run / "checkpoint.safetensors")  # refuses a torn checkpoint
            assert state["step"] >= progress[-1]
            progress.append(state["step"])
    want, got = load_file(str(ref / "final.safetensors")), load_file(str(run / "final.safetensors"))
    assert kills == KILLS and progress[-1] < steps, "the job finished before every kill point was tried"
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with capsys.disabled():
        print(
            f"\nkill points during fine-tuning: {kills} tried ({mid_write} mid-checkpoint; checkpoint at steps "
            f"{progress[1:4]}…{progress[-1]} of {steps}), 0 corrupt checkpoints, the run resumed after every kill "
            "bit-identical to the uninterrupted one"
        )
