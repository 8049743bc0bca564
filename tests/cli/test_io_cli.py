"""Safe files and the command line: round trips, and one-line errors with no output written."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cuttree
from cuttree.cli.main import main
from cuttree.models import resnet20

UMASK = os.umask(0o022)
os.umask(UMASK)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_save_load_bit_identical(tmp_path: Path) -> None:
    m = resnet20().eval()
    x = (torch.randn(2, 3, 32, 32),)
    r = cuttree.prune(m, x, cuttree.Config(ratio=0.4, latency_runs=0))
    path = cuttree.save(r, tmp_path / "r.cuttree", arch="cuttree.models:resnet20")
    loaded = cuttree.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(*x), r.model.eval()(*x))
    assert [p.name for p in tmp_path.iterdir()] == ["r.cuttree"]  # no temp file left
    plan = cuttree.read_metadata(path)["plan"]
    assert plan.to_dict() == r.plan.to_dict()


def test_an_all_zero_tensor_saves_and_loads(tmp_path: Path) -> None:
    """A tensor of zeros is stored sparse with no values at all (it crashed the load before)."""
    m = resnet20().eval()
    with torch.no_grad():
        m.layer1[0].conv1.weight.zero_()  # 16·16·3·3 = 2,304 elements, every one zero
    x = (torch.randn(2, 3, 32, 32),)
    r = cuttree.prune(m, x, cuttree.Config(ratio=0.0, latency_runs=0))
    loaded = cuttree.load(cuttree.save(r, tmp_path / "z.cuttree", arch="cuttree.models:resnet20"))
    assert torch.equal(loaded.layer1[0].conv1.weight, torch.zeros(16, 16, 3, 3))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*x), m(*x))


def test_load_refuses_untrusted_arch(tmp_path: Path) -> None:
    r = cuttree.prune(resnet20(), (torch.randn(1, 3, 32, 32),), cuttree.Config(ratio=0.2, latency_runs=0))
    path = cuttree.save(r, tmp_path / "r.cuttree", arch="os:system")
    with pytest.raises(cuttree.FileFormatError, match="outside the trusted modules"):
        cuttree.load(path)
    assert cuttree.load(path, build=resnet20) is not None


def prune_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "prune", "--arch", "cuttree.models:resnet20", "--input-shape", "1,3,32,32",
        "--out", str(tmp_path / "out.cuttree"), *extra,
    ]  # fmt: skip


def test_cli_prune_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(prune_args(tmp_path, "--set", "ratio=0.5", "--set", "latency_runs=2"), capsys)
    assert code == 0 and "parameters" in out and "latency" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.config.yaml", "out.cuttree", "out.report.json"]
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert (report["command"], report["model"], report["config"]["ratio"]) == ("prune", "out.cuttree", 0.5)
    assert report["after"]["params"] == cuttree.load(tmp_path / "out.cuttree").conv1.weight.numel() + sum(
        p.numel() for n, p in cuttree.load(tmp_path / "out.cuttree").named_parameters() if n != "conv1.weight"
    )
    assert report["before"]["latency_timing"] == report["after"]["latency_timing"] == "interleaved"
    for p in tmp_path.iterdir():  # the usual permissions (0666 less the umask), not the temp file's 0600
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~UMASK, p.name
    code, out, _ = run(["inspect", str(tmp_path / "out.cuttree")], capsys)
    assert code == 0 and "layer1.0.conv1" in out and "MACs" in out


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_CONFIGS = {
    "unknown key": ("ratio: 0.5\nthresold: 0.1\n", "config key 'thresold': unknown key — did you mean 'threshold'?"),
    "threshold ≥ 1": ("threshold: 1.0\n", "config key 'threshold' = 1.0"),
    "threshold < 0": ("threshold: -0.1\n", "config key 'threshold' = -0.1"),
    "min_samples 0": ("ratio: 0.5\nmin_samples: 0\n", "config key 'min_samples' = 0"),
    "min_samples < 0": ("ratio: 0.5\nmin_samples: -3\n", "config key 'min_samples' = -3"),
    "unknown ignore layer": ("ratio: 0.5\nignore: [layer9.0]\n", "ignore: unknown layer 'layer9.0'"),
    "empties a layer": ("ratio: 1.0\n", "would remove all 16 channels"),
    "bad yaml": ("ratio: [0.5\n", "is not valid YAML"),
    "no target": ("mode: classification\n", "no pruning target"),
    "unknown nested key": (
        "ratio: 0.5\nfinetune:\n  epoch: 3\n",
        "config key 'finetune.epoch': unknown key — did you mean 'epochs'?",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_cli_bad_config(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expect = BAD_CONFIGS[case]
    cfg = write(tmp_path / "cut.yaml", text)
    code, _, err = run(prune_args(tmp_path, "--config", str(cfg)), capsys)
    assert code == (6 if case == "empties a layer" else 2)  # a plan that cannot be made: 6, a bad value: 2
    assert err.count("\n") == 1 and err.startswith("cuttree: error: ") and expect in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.yaml"]  # no output written


def test_cli_hostile_pickle_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    code, out, err = run(prune_args(tmp_path, "--weights", str(evil), "--set", "ratio=0.5"), capsys)
    assert code == 4 and "pwned" not in out and "is refused" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_cli_not_a_cuttree_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = write(tmp_path / "junk.cuttree", "not a safetensors file at all")
    code, _, err = run(["inspect", str(junk)], capsys)
    assert code == 4 and "is not a cuttree file" in err and err.count("\n") == 1
    plain = tmp_path / "plain.cuttree"
    save_file({"w": torch.zeros(2)}, str(plain))
    code, _, err = run(["inspect", str(plain)], capsys)
    assert code == 4 and "cuttree_format=None" in err
    with pytest.raises(cuttree.FileFormatError):
        cuttree.load(junk)


def test_cli_weights_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = resnet20()
    torch.save(m.state_dict(), tmp_path / "w.pth")
    code, _, err = run(prune_args(tmp_path, "--weights", str(tmp_path / "w.pth"), "--set", "ratio=0.3"), capsys)
    assert code == 0, err
    loaded = cuttree.load(tmp_path / "out.cuttree")
    assert loaded.conv1.weight.shape[0] < 16


def test_shared_parameters_round_trip(tmp_path: Path) -> None:
    from cuttree.models import enet

    m = enet().eval()
    x = (torch.randn(1, 3, 64, 64),)
    r = cuttree.prune(m, x, cuttree.Config(mode="segmentation", ratio=0.3, latency_runs=0))
    loaded = cuttree.load(cuttree.save(r, tmp_path / "e.cuttree", arch="cuttree.models:enet"))
    assert loaded.b10.activation1 is loaded.b10.activation  # still one module under four names
    with torch.no_grad():
        assert torch.equal(loaded(*x), r.model.eval()(*x))


def test_cli_model_that_cannot_run_on_the_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = prune_args(tmp_path, "--set", "ratio=0.5")
    args[args.index("1,3,32,32")] = "1,3,32"
    code, _, err = run(args, capsys)
    assert code == 5 and "the model failed on example inputs of shapes [(1, 3, 32)]" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_model_without_tensor_outputs_is_an_error() -> None:
    class NoTensor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> str:
            self.conv(x)
            return "done"

    with pytest.raises(cuttree.TraceError, match="returned str with no tensors"):
        cuttree.make_plan(NoTensor(), (torch.randn(1, 3, 4, 4),), cuttree.Config(ratio=0.5))


def test_version_and_one_line_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"cuttree {cuttree.__version__}\n"
    for argv, expect in [
        (["prune", "--arch", "x:y"], "the following arguments are required: --out"),
        (["prune", "--input-shape", "1,a"], "argument --input-shape: '1,a' is not a shape"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("cuttree: error: "), err
        assert expect in err and "usage:" not in err and "--help" in err


def test_data_help_lists_every_loader(capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.datasets.images import DATASETS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in DATASETS) and "imagefolder:PATH" in out and "stsb" in out


def test_eval_names_the_split_and_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(prune_args(tmp_path, "--set", "ratio=0.5", "--set", "latency_runs=0"), capsys)
    assert code == 0, err
    code, out, err = run(["eval", str(tmp_path / "out.cuttree"), "--data", "digits"], capsys)
    assert code == 0, err
    assert "on digits test (451 samples)" in out
    assert "eval on digits: 451/451 (100%)" in err  # progress as plain lines off a terminal
    report = json.loads((tmp_path / "out.eval.json").read_text())
    assert (report["command"], report["split"], report["samples"]) == ("eval", "test", 451)
    assert f"top1 {report['after']['metric']['top1']:.2f}" in out
    code, out, err = run(["eval", str(tmp_path / "out.cuttree"), "--data", "digits", "--quiet"], capsys)
    assert code == 0 and err == ""


def test_eval_on_data_the_model_cannot_take_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cuttree.datasets.images import data_root

    if not (data_root() / "mnist").is_dir():
        pytest.skip(f"MNIST is not in the shared data folder {data_root()} (set CUTTREE_DATA)")
    code, _, err = run(prune_args(tmp_path, "--set", "ratio=0.5", "--set", "latency_runs=0"), capsys)
    assert code == 0, err
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["eval", str(tmp_path / "out.cuttree"), "--data", "mnist", "--limit", "8"], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot run on --data mnist samples of shape (1, 28, 28)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report for a failed evaluation


REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load_and_the_readme_names_only_shipped_ones() -> None:
    import re

    shipped = [REPO / "cut.yaml", *sorted((REPO / "recipes").glob("*.yaml"))]
    assert len(shipped) >= 4
    for path in shipped:
        cuttree.Config.from_yaml(path)
    named = set(re.findall(r"--config (\S+\.yaml)", (REPO / "README.md").read_text()))
    assert named and all((REPO / n).is_file() for n in named), named


def test_sample_config_prunes_a_torch_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = prune_args(tmp_path, "--config", str(REPO / "cut.yaml"), "--set", "latency_runs=0")
    code, _, err = run(args, capsys)
    assert code == 0, err
    plan = cuttree.read_metadata(tmp_path / "out.cuttree")["plan"]
    assert plan.config["threshold"] == 0.05 and plan.config["ratio"] == 0.5 and plan.config["min_samples"] == 64


def test_exit_codes_are_distinct_per_kind_and_documented() -> None:
    from cuttree.errors import EXIT_CODES, TraceError, exit_code

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for _, code, _ in EXIT_CODES:
        assert f"\n| {code} | " in readme, code
    engine = [c for kind, c, _ in EXIT_CODES if issubclass(kind, cuttree.CuttreeError)]
    assert len(engine) == len(set(engine)) == 6  # one per engine error kind
    assert exit_code(TraceError("x")) == 5 and exit_code(KeyError("x")) == 1  # a bug stays a bug
