"""Safe files and the command line: round trips, and one-line errors with no output written."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cuttree
from cuttree.cli import main
from cuttree.models import resnet20


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.config.yaml", "out.cuttree"]
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
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_cli_bad_config(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expect = BAD_CONFIGS[case]
    cfg = write(tmp_path / "cut.yaml", text)
    code, _, err = run(prune_args(tmp_path, "--config", str(cfg)), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cuttree: error: ") and expect in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.yaml"]  # no output written


def test_cli_hostile_pickle_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    code, out, err = run(prune_args(tmp_path, "--weights", str(evil), "--set", "ratio=0.5"), capsys)
    assert code == 2 and "pwned" not in out and "is refused" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_cli_not_a_cuttree_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = write(tmp_path / "junk.cuttree", "not a safetensors file at all")
    code, _, err = run(["inspect", str(junk)], capsys)
    assert code == 2 and "is not a cuttree file" in err and err.count("\n") == 1
    plain = tmp_path / "plain.cuttree"
    save_file({"w": torch.zeros(2)}, str(plain))
    code, _, err = run(["inspect", str(plain)], capsys)
    assert code == 2 and "cuttree_format=None" in err
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
    assert code == 2 and "the model failed on example inputs of shapes [(1, 3, 32)]" in err and err.count("\n") == 1
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
