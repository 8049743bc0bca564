"""The GPU path end to end, on one CUDA GPU, one line per check (well under 10 minutes on one H200).

1. ``run``: the README's GPU recipe, ``cuttree run --device cuda`` on the pretrained CIFAR-10
   ResNet-56: pruned to half its MACs, one epoch of fine-tuning with distillation and AMP
   (``recipes/resnet56_gpu.yaml``); its before/after figures.
2. ``resume``: the pruned model fine-tuned for half an epoch with ``finetune.deterministic`` and
   float16 (so through the gradient scaler; full precision in a CPU smoke run), once
   uninterrupted and once SIGKILLed after its ``--kill-after``-th step's checkpoint, then
   ``--resume``d; the two results' weights compared.
3. ``latency``: dense and pruned at batch 256, float32 eager, CUDA events (``measure.latency_ms``).
4. ``2:4``: ``bench/gpu_semi_structured.py``, cuttree's 2:4 masks through
   ``torch.sparse.to_sparse_semi_structured``.

Without CUDA it says so and exits 0 (nothing measured). Everything it writes goes under ``--out``
(``gpu_check.txt`` holds the printed lines). ``../shared/data`` does not travel to the device
machine, so copy what the checks read into an ignored folder of the repo and carry it, with
wheels for the one dependency the machine's image lacks (pydantic); from the repo root here::

    printf '/.gpudata/\\n/.whl/\\n' >> .git/info/exclude
    mkdir -p .gpudata/cifar10 .gpudata/weights
    cp ../shared/data/cifar10/*.npz .gpudata/cifar10/
    cp ../shared/data/weights/cifar10_resnet56.safetensors .gpudata/weights/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux2014_x86_64 -d .whl pydantic==2.* pydantic-core typing-inspection annotated-types

then, with the device tool, ``carry: [".gpudata", ".whl"]`` and the command::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:src CUTTREE_DATA=.gpudata PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu

(pydantic-core's version must be the one the downloaded pydantic names.) Copy
``gpu_check.txt`` into ``docs/results/`` afterwards.

    python bench/gpu_check.py [--data-dir ../shared/data] [--out runs/gpu_check]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/resnet56_gpu.yaml"
WEIGHTS = "weights/cifar10_resnet56.safetensors"


def run_command(data_dir: str, out: str, device: str = "cuda") -> list[str]:
    """The README's GPU recipe command (a CPU test checks that the README shows exactly this)."""
    return [
        "cuttree", "run", "--arch", "cuttree.models:resnet56", "--weights", f"{data_dir}/{WEIGHTS}",
        "--input-shape", "1,3,32,32", "--data", "cifar10", "--device", device, "--config", RECIPE, "--out", out,
    ]  # fmt: skip


LIMIT: list[str] = []  # ["--limit", "N"] for a smoke run on few images (--limit)


def _cli(args: list[str]) -> list[str]:
    # the repo's cuttree, installed or on PYTHONPATH
    return [sys.executable, "-m", "cuttree.cli", *args[1:], *LIMIT]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{path}:{src}" if path else src}


def check_run(data_dir: str, out: Path, device: str) -> str:
    run = out / "run"
    p = subprocess.run(
        _cli(run_command(data_dir, str(run), device)), cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    (out / "run.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"cuttree run exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    r = json.loads((run / "report.json").read_text())
    b, a = r["before"], r["after"]
    return (
        f"top-1 {b['metric']['top1']:.2f} → {a['metric']['top1']:.2f} after 1 epoch; MACs {b['macs']:,} → "
        f"{a['macs']:,} ({a['macs'] / b['macs']:.3f}); params {b['params']:,} → {a['params']:,}; "
        f"batch-1 latency {b['latency_ms']:.3f} → {a['latency_ms']:.3f} ms; {r['seconds']:.0f} s"
    )


def _finetune_args(model: Path, out: Path, data_dir: str, device: str) -> list[str]:
    amp = "fp16" if device.startswith("cuda") else "off"  # float16 convs on a CPU are slow reference kernels
    return [
        "cuttree", "finetune", str(model), "--data", "cifar10", "--device", device, "--out", str(out),
        "--teacher", f"{data_dir}/{WEIGHTS}", "--config", RECIPE, "--set", "finetune.epochs=0.5",
        "--set", "finetune.deterministic=true", "--set", f"finetune.amp={amp}", "--set", "finetune.checkpoint_every=10",
    ]  # fmt: skip


def _checksum(text: str) -> str:
    for line in text.splitlines():
        if "weights checksum" in line:
            return line.split("weights checksum")[1].split()[0]
    raise RuntimeError("no checksum line in the fine-tune's output")


def check_resume(data_dir: str, out: Path, kill_after: int, device: str) -> str:
    model = out / "run" / "model.cuttree"
    full = subprocess.run(_cli(_finetune_args(model, out / "ft_full", data_dir, device)), cwd=ROOT, env=_env(),
                          capture_output=True, text=True)  # fmt: skip
    if full.returncode != 0:
        raise RuntimeError(f"uninterrupted fine-tune exited {full.returncode}: {full.stderr.strip()[-300:]}")
    killed_dir = out / "ft_killed"
    proc = subprocess.Popen(_cli(_finetune_args(model, killed_dir, data_dir, device)), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = killed_dir / "checkpoint.json"
    step = 0
    while proc.poll() is None:
        if ckpt.is_file():
            try:
                step = json.loads(ckpt.read_text())["step"]
            except (json.JSONDecodeError, KeyError):  # read between the rename and the next write
                step = 0
            if step >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the fine-tune ended (exit {proc.returncode}) before step {kill_after}'s checkpoint")
    resumed = subprocess.run(_cli([*_finetune_args(model, killed_dir, data_dir, device), "--resume"]), cwd=ROOT, env=_env(),
                             capture_output=True, text=True)  # fmt: skip
    if resumed.returncode != 0:
        raise RuntimeError(f"resumed fine-tune exited {resumed.returncode}: {resumed.stderr.strip()[-300:]}")
    a, b = _checksum(full.stdout), _checksum(resumed.stdout)
    import torch

    import cuttree

    sa = cuttree.load(out / "ft_full" / "model.cuttree").state_dict()
    sb = cuttree.load(killed_dir / "model.cuttree").state_dict()
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())
    same = all(torch.equal(sa[k], sb[k]) for k in sa)
    verdict = "identical" if same else f"DIFFERENT (max |diff| {diff:.3g})"
    if not same:
        raise RuntimeError(f"killed at step {step}, resumed: weights {verdict}; checksums {a} vs {b}")
    return f"killed at step {step} (SIGKILL), resumed: weights {verdict} to the uninterrupted run (checksum {a})"


def check_latency(data_dir: str, out: Path, device: str) -> str:
    import torch

    import cuttree
    from cuttree.files.cuttree_file import load_weights
    from cuttree.frontends.torch.measure import count_macs, latency_ms
    from cuttree.models import resnet56

    dev = torch.device(device)
    dense = resnet56()
    load_weights(dense, f"{data_dir}/{WEIGHTS}")
    dense = dense.to(dev).eval()
    pruned = cuttree.load(out / "run" / "model.cuttree").to(dev).eval()
    x = (torch.randn(256, 3, 32, 32, device=dev),)
    macs = count_macs(dense, x) / count_macs(pruned, x)
    runs, warmup = (50, 10) if dev.type == "cuda" else (2, 1)  # a CPU smoke run only checks that it runs
    rows = []
    for _ in range(3):  # interleaved, so both see the same clocks
        rows.append((latency_ms(dense, x, runs, warmup), latency_ms(pruned, x, runs, warmup)))
    d = sorted(r[0] for r in rows)[1]
    p = sorted(r[1] for r in rows)[1]
    return (
        f"batch 256 fp32 eager on {dev} ({'CUDA events' if dev.type == 'cuda' else 'wall clock'}): dense {d:.3f} ms, pruned {p:.3f} ms: {d / p:.2f}× faster "
        f"for {macs:.2f}× fewer MACs (speed-up ÷ MAC reduction {d / p / macs:.2f})"
    )


def check_semi_structured(out: Path) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_semi_structured.py")], cwd=ROOT, env=_env(),
                       capture_output=True, text=True)  # fmt: skip
    (out / "semi_structured.txt").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"gpu_semi_structured.py exited {p.returncode}: {p.stderr.strip()[-300:]}")
    rows = [line for line in p.stdout.splitlines() if "→" in line and "ms" not in line]
    if not rows:
        return f"nothing measured: {p.stdout.strip()}"
    return "; ".join(" ".join(r.split()) for r in rows) + " (in→out, dense ms, 2:4 ms, speed-up, max |diff|)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CUTTREE_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--kill-after", type=int, default=60, help="SIGKILL the fine-tune after this step's checkpoint")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script")
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run; not for figures)")
    a = ap.parse_args()
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return
    if a.limit:
        LIMIT.extend(["--limit", str(a.limit)])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"{a.device} (smoke run)"
    lines = [f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, limit {a.limit or 'none'}"]
    print(lines[0], flush=True)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("run", lambda: check_run(a.data_dir, out, a.device)),
        ("resume", lambda: check_resume(a.data_dir, out, a.kill_after, a.device)),
        ("latency", lambda: check_latency(a.data_dir, out, a.device)),
        ("2:4", lambda: check_semi_structured(out)),
    ]
    failed = 0
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            line = f"{name}: ok: {fn()} [{time.perf_counter() - t0:.0f} s]"
        except Exception as e:  # each check reports its own failure; the others still run
            failed += 1
            line = f"{name}: FAILED: {type(e).__name__}: {e} [{time.perf_counter() - t0:.0f} s]"
        print(line, flush=True)
        lines.append(line)
        (out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
