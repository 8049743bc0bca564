"""A user's first hour, as the README leads it: a prune that removes nothing, or less than asked,
says so and the CLI refuses to write it; every shipped config prunes what its comments say; the
command line checks its paths first, reports the sizes of the files it writes, scores the samples
it was asked to, and lists as prunable only what prune then prunes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import cuttree
from cuttree.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = {"mode": "classification", "threshold": 0.5, "min_samples": 2}


class Nested(nn.Module):
    """The original design's model in torch: VGG16's features on 32×32, nested, a 10-class head."""

    def __init__(self) -> None:
        super().__init__()
        torchvision = pytest.importorskip("torchvision")
        self.base = torchvision.models.vgg16().features
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x))


def test_the_original_design_config_warns_alone_and_prunes_beside_a_ratio() -> None:
    torch.manual_seed(0)
    model, x = Nested().eval(), (torch.randn(1, 3, 32, 32),)
    with pytest.warns(UserWarning, match=r"nothing pruned: threshold=0.5 selects no channel, the weakest channel"):
        r = cuttree.prune(model, x, cuttree.Config(**ORIGINAL, latency_runs=0))
    assert r.after.params == r.before.params and r.table().startswith("nothing pruned: threshold=0.5")
    r = cuttree.prune(model, x, cuttree.Config(**ORIGINAL, ratio=0.3, latency_runs=0))
    assert r.model.base[0].out_channels == 48  # 64 − ⌊19.2⌋ = 45, rounded up to 8 (round_to: auto)
    assert r.plan.channels_after < r.plan.channels_before and "nothing pruned" not in r.table()


def test_a_ratio_under_one_channel_says_which_ratio_would_remove_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 4, 1))
    with pytest.warns(
        UserWarning, match=r"ratio=0.05 is under one channel of every group .*has 10\); raise ratio to at least 0.1"
    ):
        r = cuttree.prune(model, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.05, latency_runs=0))
    assert r.plan.removes_nothing and r.plan.budget["shortfall"].startswith("nothing pruned")


def test_rounding_that_gives_back_what_the_ratio_takes_is_named() -> None:
    """12 channels at ratio 0.3: 3 go, and 9 rounded up to a multiple of 8 keeps all 12."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 4, 1))
    with pytest.warns(
        UserWarning, match=r"nothing pruned: round_to=8 .* keep them; lower min_channels or set round_to: 1"
    ):
        cuttree.prune(model, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.3, round_to=8, latency_runs=0))


def test_ratio_zero_asks_for_nothing_and_stays_quiet(recwarn: pytest.WarningsRecorder) -> None:
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 4, 1))
    r = cuttree.prune(model, (torch.randn(1, 3, 8, 8),), cuttree.Config(ratio=0.0, latency_runs=0))
    assert r.plan.removes_nothing and not [w for w in recwarn if "nothing pruned" in str(w.message)]


def _prune_args(tmp_path: Path, *sets: str) -> list[str]:
    args = ["prune", "--arch", "torchvision.models:resnet18", "--arch-kwargs", '{"num_classes": 10}']
    args += ["--input-shape", "1,3,32,32", "--config", str(ROOT / "cut.yaml"), "--out", str(tmp_path / "r.cuttree")]
    return args + [f"--set={s}" for s in ("latency_runs=0", *sets)]


def test_the_cli_exits_6_and_writes_nothing_when_nothing_is_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torchvision")
    assert main(_prune_args(tmp_path, "ratio=null", "threshold=0.5")) == 6
    err = capsys.readouterr().err
    assert "cuttree: error: nothing pruned: threshold=0.5 selects no channel" in err and "--allow-noop" in err
    assert list(tmp_path.iterdir()) == []
    assert main([*_prune_args(tmp_path, "ratio=null", "threshold=0.5"), "--allow-noop"]) == 0
    assert (tmp_path / "r.cuttree").is_file()


def test_the_sample_config_prunes_what_it_says(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cut.yaml: ratio 0.5 (free widths), plus anything under 5% of its group's best."""
    pytest.importorskip("torchvision")
    assert main(_prune_args(tmp_path)) == 0
    assert "total: 2880 → 1440 channels in 12 groups" in capsys.readouterr().out


def test_an_unwritable_out_fails_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    args = _prune_args(tmp_path)
    args[args.index("--out") + 1] = str(tmp_path / "file" / "r.cuttree")
    args[args.index("--arch") + 1] = "nowhere:model"
    assert main(args) == 3  # refused before the architecture is even looked up
    assert "is a file, not a folder; choose another --out" in capsys.readouterr().err


def test_a_missing_config_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _prune_args(tmp_path)
    args[args.index("--config") + 1] = str(tmp_path / "missing.yaml")
    assert main(args) == 3
    assert "config file" in capsys.readouterr().err


# Each shipped config on a model it is written for (small inputs): what its comments say it does.
SHIPPED = {
    "cut.yaml": ("torchvision.models:resnet18", {"num_classes": 10}, (1, 3, 32, 32), "ratio", 0.5),
    "recipes/resnet56_gpu.yaml": ("cuttree.models:resnet56", {}, (1, 3, 32, 32), "macs", 0.5),
    "recipes/resnet56_depgraph.yaml": ("cuttree.models:resnet56", {}, (1, 3, 32, 32), "macs", 0.47**0.25),
    "recipes/segmentation.yaml": ("cuttree.models:enet", {}, (1, 3, 64, 96), "macs", 0.6),
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_torch_config_prunes_what_its_comments_say(name: str) -> None:
    from cuttree.files.cuttree_file import build_model
    from cuttree.recover.job import step_config

    arch, kwargs, shape, kind, target = SHIPPED[name]
    if arch.startswith("torchvision"):
        pytest.importorskip("torchvision")
    cfg = cuttree.Config.from_yaml(ROOT / name, {"latency_runs": 0})
    torch.manual_seed(0)
    model = build_model(arch, kwargs).eval()
    plan, _ = cuttree.make_plan(model, (torch.randn(*shape),), step_config(cfg, 0))  # one step of `steps`
    assert not plan.removes_nothing
    if kind == "macs":
        assert target - 0.05 < plan.macs_after / plan.macs_before <= target
    else:
        assert plan.channels_after <= (1 - target) * plan.channels_before


def test_every_shipped_config_is_tested() -> None:
    shipped = {str(p.relative_to(ROOT)) for p in [ROOT / "cut.yaml", *ROOT.glob("recipes/*.yaml")]}
    keras_ones = {"recipes/keras_vgg16.yaml"}  # tests/keras/test_keras.py: the original design's VGG16
    assert shipped == set(SHIPPED) | keras_ones
    for name in shipped:
        assert isinstance(yaml.safe_load((ROOT / name).read_text()), dict)


class LiteralView(nn.Module):
    """``b``'s channels meet a literal 8 in the model's code: the trace cannot see it, surgery would
    break it, so prune keeps ``b`` whole; ``a`` prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.relu(self.a(x)))
        return self.fc(y.reshape(y.shape[0], 8, -1).mean(-1))


def test_layers_lists_what_prune_keeps_whole_as_kept_whole(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--arch", f"{__name__}:LiteralView", "--input-shape", "1,3,4,4"]) == 0
    out = capsys.readouterr().out
    prunable, _, whole = out.partition("kept whole (why):")
    assert "1 prunable groups (8 channels):" in prunable and "  a " in prunable and "  b " not in prunable
    assert "a group the checks of prune keep whole" in whole and "  b " in whole
    r = cuttree.prune(LiteralView(), (torch.randn(1, 3, 4, 4),), cuttree.Config(ratio=0.5, latency_runs=0))
    assert [len(g.keep) for g in r.plan.groups] == [4, 8]  # what layers said


def test_a_sparse_save_reports_the_size_of_the_file_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    pytest.importorskip("torchvision")
    args = _prune_args(tmp_path, "ratio=0.9", "method=unstructured", "threshold=null")
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.report.json").read_text())
    written = (tmp_path / "r.cuttree").stat().st_size
    assert report["after"]["size_bytes"] == written < report["before"]["size_bytes"] / 4
    assert f"{written / 1e6:.2f} MB" in out


def test_eval_scores_the_samples_it_is_limited_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")
    from cuttree.models import vgg16_bn_cifar

    r = cuttree.prune(vgg16_bn_cifar(), (torch.randn(1, 3, 32, 32),), cuttree.Config(ratio=0.75, latency_runs=0))
    path = cuttree.save(r, tmp_path / "m.cuttree", arch="cuttree.models:vgg16_bn_cifar")
    assert main(["eval", str(path), "--data", "digits", "--limit", "100", "--quiet"]) == 0
    assert "on digits test (100 samples)" in capsys.readouterr().out
    assert main(["eval", str(path), "--data", f"imagefolder:{tmp_path}", "--limit", "100", "--quiet"]) == 2
    assert "--limit: the imagefolder loader reads every sample it is given" in capsys.readouterr().err


def test_the_sample_config_meets_a_macs_budget_beside_its_threshold() -> None:
    """The README's sensitivity-budget command failed with exit 6 while the threshold vetoed every
    channel; beside a budget it now removes what it selects too, and the budget is met."""
    from cuttree.models import resnet20

    cfg = cuttree.Config.from_yaml(ROOT / "cut.yaml", {"ratio": None, "macs_target": 0.5, "latency_runs": 0})
    torch.manual_seed(0)
    plan, _ = cuttree.make_plan(resnet20(), (torch.randn(1, 3, 32, 32),), cfg)
    assert 0.45 < plan.macs_after / plan.macs_before <= 0.5


def test_the_segmentation_recipes_enet_fine_tunes_with_checkpoints_and_resumes(tmp_path: Path) -> None:
    """The ENet registers one PReLU under several names; its checkpoints once failed to save
    ("Some tensors share memory"). Killed after 2 steps and resumed, it ends as the whole run."""
    from torch.utils.data import TensorDataset

    from cuttree.models import enet
    from cuttree.recover.train import finetune

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(10, 3, 32, 48, generator=g) * 255, torch.randint(0, 12, (10, 32, 48), generator=g))
    cfg = cuttree.Config.from_yaml(ROOT / "recipes/segmentation.yaml", {"finetune": {"batch_size": 4, "epochs": 2}})
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"distill": 0.0, "checkpoint_every": 1})})

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return enet()

    whole = fresh()
    finetune(whole, data, cfg, run_dir=tmp_path / "a", log=lambda m: None)
    finetune(fresh(), data, cfg, run_dir=tmp_path / "b", max_steps=2, log=lambda m: None)
    resumed = fresh()
    finetune(resumed, data, cfg, run_dir=tmp_path / "b", resume=True, log=lambda m: None)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
