"""Fine-tuning: exact losses and schedules, resume after a kill, DDP on CPU, BN recalibration, plan composition."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import cuttree
from cuttree.config import FinetuneConfig
from cuttree.core.plan import compose
from cuttree.recover.loop import distill_loss, lr_at
from cuttree.recover.train import finetune, recalibrate_bn

ROOT = Path(__file__).resolve().parents[2]


def tiny() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def cfg(**ft: object) -> cuttree.Config:
    return cuttree.Config(ratio=0.0, finetune={"epochs": 2, "batch_size": 8, "checkpoint_every": 1, **ft})


def test_distill_loss_exact() -> None:
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.5, 1.0, 3.0]])
    T = 2.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    want = (pt * (pt.log() - ps.log())).sum() * T * T
    torch.testing.assert_close(distill_loss(s, t, T), want)
    assert distill_loss(s, s, T).item() == pytest.approx(0.0, abs=1e-7)


def test_lr_schedules_exact() -> None:
    ft = FinetuneConfig(lr=0.1, schedule="step", step_epochs=1, gamma=0.5)
    assert [lr_at(s, 40, 10, ft) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    cos = FinetuneConfig(lr=0.1, warmup_steps=2)
    assert lr_at(0, 10, 5, cos) == pytest.approx(0.05)
    assert lr_at(5, 10, 5, cos) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_resume_after_kill_gives_identical_weights(tmp_path: Path) -> None:
    """64 samples, 6 held out to validate on: 58 train in 7 steps of 8 a epoch, 14 in all (the
    last weights kept: random labels never beat the start, and these must be trained ones)."""
    full, said = tiny(), list[str]()
    c = cfg(distill=0.5, keep_best=False)
    finetune(full, data(), c, teacher=tiny(), run_dir=tmp_path / "a", log=said.append)
    killed = tiny()
    s = finetune(killed, data(), c, teacher=tiny(), run_dir=tmp_path / "b", max_steps=5, log=lambda m: None)
    assert s["step"] == 5 < s["total"] == 14
    torch.manual_seed(123)  # a new process: the RNG must come from the checkpoint
    resumed, said_again = tiny(), list[str]()
    state = finetune(resumed, data(), c, teacher=tiny(), run_dir=tmp_path / "b", resume=True, log=said_again.append)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # the displayed running loss and the validation record continue across the kill
    line = [m.split(" eta")[0] for m in said if m.startswith("step 6/")]
    assert line == [m.split(" eta")[0] for m in said_again if m.startswith("step 6/")] and "loss" in line[0]
    assert state["validation"]["source"] == "held out" and state["validation"]["samples"] == 6
    assert [h[0] for h in state["validation"]["history"]] == [0, 7, 14]


class SharedAct(nn.Module):
    """One PReLU registered under two names, as cuttree.models.enet registers its activations."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.PReLU()
        self.act2 = self.act
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act(self.conv1(x)))))


def test_a_model_that_shares_a_module_checkpoints_and_resumes(tmp_path: Path) -> None:
    full = SharedAct()
    finetune(full, data(), cfg(), run_dir=tmp_path / "a", log=lambda m: None)
    killed = SharedAct()
    finetune(killed, data(), cfg(), run_dir=tmp_path / "b", max_steps=3, log=lambda m: None)
    resumed = SharedAct()
    finetune(resumed, data(), cfg(), run_dir=tmp_path / "b", resume=True, log=lambda m: None)
    assert resumed.act is resumed.act2
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_keep_best_ends_with_the_weights_from_before_a_fine_tuning_that_hurt(tmp_path: Path) -> None:
    """lr 10 wrecks the model: the run warns, and ends with the weights it started with."""
    model = tiny()
    start = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match=r"fine-tuning did not improve the model \(validation top1 .* before"):
        state = finetune(model, data(), cfg(lr=10.0), log=lambda m: None)
    assert state["validation"]["kept"] == "best" and state["validation"]["best_step"] == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    wrecked = tiny()
    with pytest.warns(
        UserWarning, match=r"made the model worse .* kept the last weights \(finetune.keep_best is off\)"
    ):
        finetune(wrecked, data(), cfg(lr=10.0, keep_best=False), log=lambda m: None)
    assert not torch.equal(wrecked[0].weight, start["0.weight"])


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune(tiny(), data(), cfg(), run_dir=tmp_path, resume=True)


def test_a_pruned_causal_lm_fine_tunes_on_text_alone_with_distillation_exact() -> None:
    """Recovery of a pruned language model: the batches are dicts of token ids and attention masks,
    no labels. Oracle: one SGD step on the loss written out here: 0.5 · next-token cross-entropy
    (shifted, padding ignored) + 0.5 · T² · KL(dense teacher ‖ student) over the vocabulary,
    averaged over the tokens that are not padding."""
    transformers = pytest.importorskip("transformers")
    from test_attention import tiny_llama_and_texts

    teacher, ids, mask = tiny_llama_and_texts(transformers)
    student = cuttree.prune(teacher, (ids[:1],), cuttree.Config(ratio=0.5, latency_runs=0)).model
    want = copy.deepcopy(student).train()
    logits = want(input_ids=ids, attention_mask=mask).logits
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 100), target.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        log_t = F.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits / 2.0, -1)
    kl = (log_t.exp() * (log_t - F.log_softmax(logits / 2.0, -1))).sum(-1)
    (0.5 * ce + 0.5 * kl[mask == 1].mean() * 4.0).backward()
    with torch.no_grad():
        for p in want.parameters():
            p -= 0.1 * p.grad

    texts = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(4)]
    ft = {"epochs": 1, "batch_size": 4, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "distill": 0.5}
    ft["val_fraction"] = 0.0  # all four texts in the one step
    s = finetune(student, texts, cfg(**ft, temperature=2.0), teacher=teacher, log=lambda m: None)
    assert s["total"] == 1
    for (k, a), b in zip(want.state_dict().items(), student.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)


def test_text_validation_goes_in_training_sized_batches_to_the_same_mean_loss() -> None:
    """A window's logits span the vocabulary (SmolLM2: 62 windows of 512 in one batch of 256 took
    20 GB): validation on text goes in batches of ``finetune.batch_size``; the mean loss is the
    same as in one batch (every window has the same token count)."""
    transformers = pytest.importorskip("transformers")
    from test_attention import tiny_llama_and_texts

    from cuttree.recover.validation import score

    model, ids, _ = tiny_llama_and_texts(transformers)
    texts = [{"input_ids": ids[i]} for i in range(len(ids))]
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(len(kw["input_ids"])), with_kwargs=True)
    name, loss, higher = score(model, texts, cfg(batch_size=3))
    hook.remove()
    with torch.no_grad():
        whole = float(model(input_ids=ids, labels=ids).loss)
    assert (name, higher, sizes) == ("loss", False, [3, 1])
    assert loss == pytest.approx(whole, rel=1e-5)


def test_a_language_model_run_on_text_resumes_after_a_kill_with_identical_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from test_attention import tiny_llama

    torch.manual_seed(0)
    teacher = tiny_llama(transformers)
    texts = [
        {"input_ids": torch.randint(0, 100, (10,)), "attention_mask": torch.ones(10, dtype=torch.long)}
        for _ in "abcdef"
    ]  # one held out to validate on (by its loss), five to train on: 2 steps an epoch
    c = cfg(batch_size=2, distill=0.5, keep_best=False)
    full, killed = copy.deepcopy(teacher), copy.deepcopy(teacher)
    finetune(full, texts, c, teacher=teacher, run_dir=tmp_path / "a", log=lambda m: None)
    assert (
        finetune(killed, texts, c, teacher=teacher, run_dir=tmp_path / "b", max_steps=1, log=lambda m: None)["step"]
        == 1
    )
    resumed = copy.deepcopy(teacher)
    s = finetune(resumed, texts, c, teacher=teacher, run_dir=tmp_path / "b", resume=True, log=lambda m: None)
    assert s["step"] == s["total"] == 4
    assert s["validation"]["metric"] == "loss" and [h[0] for h in s["validation"]["history"]] == [0, 2, 4]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(full.lm_head.weight, teacher.lm_head.weight)


def test_training_batches_without_labels_are_a_clear_error() -> None:
    inputs_only = TensorDataset(data().tensors[0])
    with pytest.raises(ValueError, match=re.escape("no labels; give (x, y) pairs or dicts with 'labels'")):
        finetune(tiny(), inputs_only, cfg(), log=lambda m: None)


def test_bn_recalibration_needs_min_samples() -> None:
    m = tiny()
    c = cuttree.Config(ratio=0.0, min_samples=100)
    with pytest.raises(ValueError, match="has 64 samples; min_samples=100"):
        recalibrate_bn(m, data(64), c)
    ok = cuttree.Config(ratio=0.0, min_samples=64, calib_samples=64)
    assert recalibrate_bn(m, data(64), ok) == 64
    x = torch.stack([data(64)[i][0] for i in range(64)])
    torch.testing.assert_close(m[1].running_mean, m[0](x).mean((0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)


def test_compose_equals_two_prunings() -> None:
    from cuttree.models import resnet20

    m = resnet20().eval()
    x = (torch.randn(2, 3, 32, 32),)
    r1 = cuttree.prune(m, x, cuttree.Config(ratio=0.3, latency_runs=0))
    r2 = cuttree.prune(r1.model, x, cuttree.Config(ratio=0.3, latency_runs=0))
    direct = cuttree.apply_plan(resnet20(), compose(r1.plan, r2.plan))
    direct.load_state_dict(r2.model.state_dict())
    with torch.no_grad():
        assert torch.equal(direct.eval()(*x), r2.model.eval()(*x))


def _digits_ready() -> None:
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")


def _pruned_file(tmp_path: Path) -> Path:
    from cuttree.models import vgg16_bn_cifar

    r = cuttree.prune(vgg16_bn_cifar(), (torch.randn(1, 3, 32, 32),), cuttree.Config(ratio=0.75, latency_runs=0))
    return cuttree.save(r, tmp_path / "p.cuttree", arch="cuttree.models:vgg16_bn_cifar")


def _cli(*args: str, module: str = "cuttree.cli") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )


SETS = [
    "--set",
    "finetune.epochs=0.25",
    "--set",
    "finetune.batch_size=32",
    "--set",
    "finetune.checkpoint_every=2",
    "--quiet",
]


def test_cli_finetune_resume(tmp_path: Path) -> None:
    _digits_ready()
    p = _pruned_file(tmp_path)
    a = _cli("finetune", str(p), "--data", "digits", "--out", str(tmp_path / "a"), *SETS)
    assert a.returncode == 0, a.stderr
    assert "requires_grad" not in a.stderr and "checksum" not in a.stdout  # no debug line, no torch warning
    b = _cli("finetune", str(p), "--data", "digits", "--out", str(tmp_path / "b"), "--max-steps", "4", *SETS)
    assert b.returncode == 0 and "stopped at step 4/" in b.stdout and not (tmp_path / "b" / "report.json").exists()
    c = _cli("finetune", str(p), "--data", "digits", "--out", str(tmp_path / "b"), "--resume", *SETS)
    assert c.returncode == 0, c.stderr
    sums = [json.loads((tmp_path / d / "report.json").read_text())["weights_sha256"] for d in ("a", "b")]
    assert sums[0] == sums[1]
    assert (tmp_path / "a" / "model.cuttree").is_file()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_agree(tmp_path: Path, parallel: str) -> None:
    """``cuttree finetune`` under ``torchrun``: DDP, or FSDP2 (the weights gathered whole into a
    plain copy before they are evaluated and saved)."""
    _digits_ready()
    p = _pruned_file(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "cuttree.cli",
         "finetune", str(p), "--data", "digits", "--out", str(tmp_path / "ddp"), *SETS,
         "--set", f"finetune.parallel={parallel}"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())  # written once the two digests agreed
    assert report["processes"] == 2 and report["weights_sha256"].startswith("sha256:")
    assert (tmp_path / "ddp" / "model.cuttree").is_file() and "checksum" not in run.stdout


def test_missing_dataset_path_is_an_error(tmp_path: Path) -> None:
    r = _cli("eval", str(_pruned_file(tmp_path)), "--data", f"imagefolder:{tmp_path / 'nope'}")
    assert r.returncode == 3 and "does not exist" in r.stderr and r.stderr.count("\n") == 1


def test_cli_run_writes_a_complete_run_folder(tmp_path: Path) -> None:
    _digits_ready()
    out = tmp_path / "run"
    r = _cli(
        "run", "--arch", "cuttree.models:vgg16_bn_cifar", "--input-shape", "1,3,32,32", "--data", "digits",
        "--out", str(out), "--set", "ratio=0.5", "--set", "steps=2", "--set", "latency_runs=0",
        "--set", "finetune.epochs=0.2", "--set", "finetune.batch_size=32", "--set", "min_samples=32", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["config.yaml", "model.cuttree", "report.html", "report.json", "report.md"]
    import json

    report = json.loads((out / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [1, 2]
    assert report["after"]["params"] < report["before"]["params"]
    model = cuttree.load(out / "model.cuttree")  # the composed plan rebuilds from the original architecture
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]


def test_cli_layers_lists_groups(tmp_path: Path) -> None:
    r = _cli("layers", "--arch", "cuttree.models:resnet20", "--input-shape", "1,3,32,32")
    assert r.returncode == 0 and "prunable groups" in r.stdout and "linear" in r.stdout and "output" in r.stdout


@pytest.mark.parametrize("extra", [{"criterion": "taylor"}, {"criterion": "activation"}, {"reconstruct": True}])
def test_run_job_feeds_its_training_data_to_calibration(tmp_path: Path, extra: dict[str, object]) -> None:
    from cuttree.models import resnet20
    from cuttree.recover.job import run_job

    g = torch.Generator().manual_seed(5)
    ds = TensorDataset(torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g))
    c = cuttree.Config(
        ratio=0.5,
        min_samples=32,
        calib_samples=32,
        latency_runs=0,
        finetune={"epochs": 0.25, "batch_size": 16},
        **extra,
    )
    torch.manual_seed(0)
    arch = "cuttree.models:resnet20"
    report = run_job(resnet20(), (torch.randn(1, 3, 32, 32),), c, ds, ds, tmp_path, arch, log=lambda m: None)
    assert report["after"]["params"] < report["before"]["params"]
    assert (tmp_path / "model.cuttree").is_file()


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two steps; the second's fine-tuning is interrupted after 2 of its steps. ``resume`` prunes
    each step again, resumes each fine-tuning from its checkpoint and ends with the same model;
    another config cannot resume it."""
    from cuttree.models import resnet20
    from cuttree.recover import train
    from cuttree.recover.job import run_job

    g = torch.Generator().manual_seed(5)
    ds = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    c = cuttree.Config(
        ratio=0.5, steps=2, latency_runs=0, finetune={"epochs": 2, "batch_size": 16, "checkpoint_every": 1}
    )
    x, arch = (torch.randn(1, 3, 32, 32),), "cuttree.models:resnet20"

    def run(out: Path, **kw: object) -> dict[str, object]:
        torch.manual_seed(0)
        return run_job(resnet20(), x, c, ds, ds, out, arch, log=lambda m: None, **kw)  # type: ignore[arg-type]

    whole = run(tmp_path / "whole")
    real = train.finetune  # what the torch frontend's fine-tuning calls

    def killed(*args: object, **kw: object) -> dict[str, object]:
        if Path(str(kw["run_dir"])).name == "step2":
            real(*args, **{**kw, "max_steps": 2})  # type: ignore[arg-type]
            raise KeyboardInterrupt
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["config.yaml", "step1", "step2"]
    monkeypatch.setattr(train, "finetune", real)
    with pytest.raises(ValueError, match="was started with another config"):
        run_job(resnet20(), x, c.model_copy(update={"seed": 1}), ds, ds, tmp_path / "cut", arch, resume=True)
    resumed = run(tmp_path / "cut", resume=True)
    for (k, a), b in zip(whole["model"].state_dict().items(), resumed["model"].state_dict().values(), strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b), k
    assert (tmp_path / "cut" / "model.cuttree").is_file()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        run(tmp_path / "never", resume=True)


def test_a_live_bar_on_a_terminal_replaces_the_step_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from cuttree.models import resnet20
    from cuttree.recover.train import finetune
    from cuttree.reports import progress

    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    cfg = cuttree.Config(ratio=0.1, finetune={"epochs": 1, "batch_size": 16, "checkpoint_every": 0})
    plain: list[str] = []
    torch.manual_seed(0)
    a = resnet20()
    finetune(a, ds, cfg, log=plain.append, progress=True)  # not a terminal here: plain lines
    assert [line.split()[1] for line in plain if "validation" not in line] == ["1/3", "2/3", "3/3"]  # 6 held out
    assert [line.split(":")[0] for line in plain if "validation" in line] == [
        "validation (held out, 6 samples)",
        "step 3/3",
    ]
    screen = io.StringIO()
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    real = progress.Progress.__init__

    def to_screen(self: progress.Progress, *args: object, **kw: object) -> None:
        real(self, *args, **{**kw, "console": Console(file=screen, force_terminal=True, width=100)})  # type: ignore[arg-type]

    monkeypatch.setattr(progress.Progress, "__init__", to_screen)
    live: list[str] = []
    torch.manual_seed(0)
    b = resnet20()
    finetune(b, ds, cfg, log=live.append, progress=True)
    assert (
        live == []
        and "fine-tune" in screen.getvalue()
        and "3/3" in screen.getvalue()
        and "val top1" in screen.getvalue()
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)  # the bar changes nothing but what is printed
