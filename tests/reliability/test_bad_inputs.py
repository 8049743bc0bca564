"""No traceback for bad input: generated configs, ``--set`` items and command lines.

Each generated input is either accepted or refused with a one-line error (``ValueError`` /
``TypeError`` from the API; one ``cuttree: error: …`` line and an exit status of
:data:`cuttree.errors.EXIT_CODES` from the CLI);
anything else (another exception, a traceback, a multi-line message) fails the test. The fast
suite runs a few thousand cases; ``CUTTREE_FUZZ=2`` (``make test-slow``) runs twice as many (over 10,000).
Counts are printed with ``-s``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cuttree
from cuttree.config import Config, parse_set

SCALE = int(os.environ.get("CUTTREE_FUZZ", "1"))
KEYS = [*Config.model_fields, "thresold", "ratoi", "mode ", "finetune.epochs", "", "layers.x"]
FT_KEYS = ["epochs", "lr", "batch_size", "distill", "amp", "schedule", "epoch", "momentum", "temperature"]
COUNTS: Counter[str] = Counter()

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["classification", "segmentation", "l1", "taylor", "global", "2:4", "4:2", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
noise = st.dictionaries(
    st.sampled_from(KEYS),
    values | st.dictionaries(st.sampled_from(FT_KEYS), values, max_size=3),
    max_size=6,
)
# half of the cases start from a valid config, so that near-valid ones are generated too
configs = noise | st.builds(
    lambda extra, r: {"ratio": r, **extra}, st.dictionaries(st.sampled_from(KEYS), values, max_size=2), st.floats(0, 1)
)


def _one_line(e: BaseException) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)


@settings(max_examples=3000 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(configs)
def test_generated_configs_are_accepted_or_refused_in_one_line(data: dict[str, Any]) -> None:
    COUNTS["config"] += 1
    try:
        Config(**data)
    except (ValueError, TypeError) as e:
        _one_line(e)
        COUNTS["config refused"] += 1


@settings(max_examples=2000 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.text(max_size=20) | st.sampled_from(["ratio=0.5", "finetune.epochs=2", "=", "a.b.c=[1", "x=:"]), max_size=4
    )
)
def test_generated_set_items_parse_or_are_refused_in_one_line(items: list[str]) -> None:
    COUNTS["--set"] += 1
    try:
        Config(**parse_set(items))
    except (ValueError, TypeError) as e:
        _one_line(e)
        COUNTS["--set refused"] += 1


COMMANDS = ["prune", "inspect", "layers", "eval", "export", "finetune", "run", "sensitivity", "report", "bogus"]
FLAGS = {
    "--arch": st.sampled_from(["tiny_models:mlp", "torch.nn:Nope", "os:system", "notamodule", ":", "torch.nn:Conv2d"]),
    "--arch-kwargs": st.sampled_from(['{"width": 16}', '{"width": 0}', "{", "[]", '{"x": 1}', "null"]),
    "--input-shape": st.sampled_from(["1,4", "2,4", "1,3,8,8", "0,4", "a", "-1", "1,,4", ""]),
    "--set": st.sampled_from(["ratio=0.5", "ratio=2", "thresold=0.1", "ratio", "finetune.epoch=1", "min_samples=0"]),
    "--out": st.sampled_from(["OUT/m.cuttree", "OUT/m.txt", "OUT/run", "OUT/s.json", "OUT/m.onnx"]),
    "--data": st.sampled_from(["digits", "nope", "imagefolder:/nonexistent", "cifar10x"]),
    "--config": st.sampled_from(["OUT/none.yaml", "OUT/bad.yaml"]),
    "--onnx": st.sampled_from(["OUT/m.onnx", "OUT/m.bin"]),
    "--ratios": st.sampled_from(["0.5", "1.5", "a,b", ""]),
    "--samples": st.sampled_from(["0", "-3", "x", "10"]),
    "--rows": st.sampled_from(["3", "x"]),
    "--weights": st.sampled_from(["OUT/none.safetensors", "OUT/bad.yaml"]),
}
POSITIONAL = st.sampled_from(["OUT/none.cuttree", "OUT/bad.yaml", "OUT", "OUT/m.cuttree"])


PRUNE = ["prune", "--arch", "tiny_models:mlp", "--input-shape", "1,4", "--out", "OUT/m.cuttree",
         "--set", "ratio=0.5", "--set", "latency_runs=0"]  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    if draw(st.booleans()):  # a working prune command, then some extra flags
        argv = list(PRUNE)
        for flag in draw(st.lists(st.sampled_from(["--set", "--rows", "--input-shape", "--arch-kwargs"]), max_size=2)):
            argv += [flag, draw(FLAGS[flag])]
        return argv
    argv = [draw(st.sampled_from(COMMANDS))]
    if draw(st.booleans()):
        argv.append(draw(POSITIONAL))
    for flag in draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=5)):
        argv += [flag, draw(FLAGS[flag])]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(["--quiet", "--frobnicate", "-x", "--"])))
    return argv


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "bad.yaml").write_text("ratio: [0.5\n")
    return d


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=command_lines())
def test_generated_command_lines_exit_0_or_a_known_code_with_one_line(argv: list[str], out_dir: Path) -> None:
    from cuttree.cli.main import main
    from cuttree.errors import EXIT_CODES

    argv = [a.replace("OUT", str(out_dir)) for a in argv]
    COUNTS["command line"] += 1
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
            code = int(e.code or 0)
    lines = [
        line for line in err.getvalue().splitlines() if not line.startswith(("eval on", "export:", "sensitivity:"))
    ]
    lines = [line for line in lines if "Warning" not in line and not line.startswith("  ")]
    assert code == 0 or code in {c for _, c, _ in EXIT_CODES}, (argv, code, err.getvalue())
    if code != 0:
        COUNTS[f"command line exit {code}"] += 1
        errors = [line for line in lines if line.startswith("cuttree: error: ")]
        assert len(errors) == 1, (argv, err.getvalue())


def test_zz_print_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    total = COUNTS["config"] + COUNTS["--set"] + COUNTS["command line"]
    with capsys.disabled():
        print(f"\nbad-input fuzzing: {total} generated inputs ({dict(COUNTS)}), 0 tracebacks")
    assert total >= (3000 + 2000 + 300) * SCALE * 0.5  # hypothesis may stop early on a small space
    assert cuttree.__version__
