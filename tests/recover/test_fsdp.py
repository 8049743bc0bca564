"""Several processes on the CPU (gloo): FSDP2 recovery of a tiny LLaMA on text with distillation,
against one process (``tests/recover/fsdp_run.py`` is the run; ``torchrun`` starts it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def _run(tmp: Path, name: str, parallel: str, batch: int, *more: str, processes: int = 2) -> dict[str, object]:
    script = [str(HERE / "fsdp_run.py"), str(tmp / name), parallel, str(batch), *more]
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29533"]
    cmd = [sys.executable, *(launch if processes > 1 else []), *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_fsdp_on_two_processes_trains_as_one_process_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Ten steps of AdamW with distillation: one process with batches of 4, and two FSDP2 processes
    with batches of 2 each (the same 4 samples per step, gradients averaged by the reduce-scatter)
    log the same loss within 1e-5 at every step. The two-process run stopped after 4 steps and
    resumed from its checkpoint ends with the weights (SHA-256) of the uninterrupted one."""
    pytest.importorskip("transformers")
    one = _run(tmp_path, "one", "ddp", 4, processes=1)
    two = _run(tmp_path, "two", "fsdp", 2)
    assert one["step"] == two["step"] == 10 and len(one["losses"]) == len(two["losses"]) == 10  # type: ignore[arg-type]
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True)) < 1e-5  # type: ignore[call-overload]
    stopped = _run(tmp_path, "three", "fsdp", 2, "4")
    assert stopped["step"] == 4
    resumed = _run(tmp_path, "three", "fsdp", 2, "--resume")
    assert resumed["losses"] == two["losses"] and resumed["digest"] == two["digest"]


def test_fsdp_keeps_the_best_weights_whole(tmp_path: Path) -> None:
    """Random text does not improve the validation loss, so ``keep_best`` ends with the weights
    from before fine-tuning: gathered from the shards, restored into them, gathered again to the
    digest of the model as it was built."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(HERE))
    from fsdp_run import tiny

    from cuttree.recover.train import weights_digest

    ran = _run(tmp_path, "best", "fsdp", 2, "--keep-best")
    assert ran["kept"] == "best" and ran["digest"] == weights_digest(tiny())
