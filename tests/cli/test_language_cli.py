"""The command line on a causal language model (``--hf`` / ``--gguf``): prune on calibration text,
write a ``.cuttree`` file or a ``from_pretrained`` folder, and measure perplexity before/after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import cuttree
from cuttree.cli.main import main
from cuttree.datasets.lm_text import windows
from cuttree.frontends.torch.language import perplexity

PROSE = (
    "It was a bright cold day in April, and the clocks were striking thirteen. The hallway smelt of boiled "
    "cabbage and old rag mats. At one end of it a coloured poster, too large for indoor display, had been "
    "tacked to the wall. "
)


@pytest.fixture
def lm(tmp_path: Path) -> Path:
    """A tiny random LLaMA and a one-character-per-token tokenizer, as a save_pretrained folder."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{chr(c): c - 31 for c in range(32, 127)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "lm")
    (tmp_path / "prose.txt").write_text(PROSE * 3, encoding="utf-8")
    return tmp_path / "lm"


def args(lm: Path, *more: str) -> list[str]:
    text = f"text:{lm.parent / 'prose.txt'}"
    return [*more, "--length", "32", "--calib-text", text, "--calib-windows", "8", "--set", "min_samples=8"]


def test_prune_then_eval_a_language_model(lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = lm.parent / "sparse.cuttree"
    sets = ["--set", "method=unstructured", "--set", "criterion=wanda", "--set", "ratio=0.5", "--set", "scope=row"]
    assert main(args(lm, "prune", "--hf", str(lm), *sets, "--out", str(out))) == 0
    said = capsys.readouterr()
    assert "sparsity 50.0% of the weights of 14 layers" in said.out
    assert "layer 2/2 pruned in" in said.err  # progress, one line per decoder layer
    text = f"text:{lm.parent / 'prose.txt'}"
    argv = ["eval", str(out), "--tokenizer", str(lm), "--metric", "perplexity", "--data", text,
            "--windows", "4", "--length", "32", "--before", str(lm)]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    report = json.loads((lm.parent / "sparse.eval.json").read_text())
    test = windows(AutoTokenizer.from_pretrained(lm), PROSE * 3, 32, 4)
    assert report["after"]["perplexity"] == perplexity(cuttree.load(out), test, batch_size=1)
    assert report["before"]["perplexity"] == perplexity(AutoModelForCausalLM.from_pretrained(lm), test, batch_size=1)
    assert f"after: perplexity {report['after']['perplexity']:.3f}" in said
    assert "4 windows of 32 tokens (124 predicted)" in said


def test_prune_a_language_model_into_a_from_pretrained_folder(lm: Path) -> None:
    out = lm.parent / "small"
    sets = ["--set", "ratio=0.5", "--set", "criterion=l1"]
    assert main(args(lm, "prune", "--hf", str(lm), *sets, "--out", str(out))) == 0
    small = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no cuttree
    assert small.config.intermediate_size == 64 and (out / "tokenizer.json").is_file()


def test_a_language_model_is_pruned_with_wanda_unless_the_config_names_a_criterion(lm: Path) -> None:
    from cuttree.files.cuttree_file import read_metadata

    for sets, want in (([], {"wanda"}), (["--set", "criterion=l2"], {"l2"})):
        out = lm.parent / f"m{len(sets)}.cuttree"
        assert main(args(lm, "prune", "--hf", str(lm), "--set", "ratio=0.5", *sets, "--out", str(out))) == 0
        meta = read_metadata(out)
        assert {g.criterion for g in meta["plan"].groups} == want and {meta["plan"].config["criterion"]} == want


def test_run_prunes_distils_and_reports_a_language_models_perplexity(
    lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --hf``: the report's perplexities are those of the dense folder and of the saved
    ``model.cuttree`` reloaded, on the same windows; the tokenizer is written beside it."""
    out, text = lm.parent / "run", f"text:{lm.parent / 'prose.txt'}"
    sets = ["--set", "ratio=0.5", "--set", "criterion=wanda", "--set", "finetune.epochs=1",
            "--set", "finetune.batch_size=4", "--set", "latency_runs=3"]  # fmt: skip
    argv = args(lm, "run", "--hf", str(lm), *sets, "--data", text, "--windows", "4", "--out", str(out), "--quiet")
    assert main(argv) == 0
    said = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    test = windows(AutoTokenizer.from_pretrained(out), PROSE * 3, 32, 4)  # the tokenizer in the run folder
    dense = perplexity(AutoModelForCausalLM.from_pretrained(lm), test)
    pruned = cuttree.load(out / "model.cuttree")
    assert report["before"]["metric"] == {"perplexity": dense}
    assert report["after"]["metric"] == {"perplexity": perplexity(pruned, test)}
    assert pruned.model.layers[0].mlp.gate_proj.out_features == 64 and report["history"][0]["finetune_steps"] > 0
    after = report["after"]["metric"]["perplexity"]
    row = next(line.split() for line in said.splitlines() if line.startswith("perplexity"))
    assert row == ["perplexity", f"{dense:.2f}", f"{after:.2f}", f"{after / dense:.2f}×"]
    md = (out / "report.md").read_text()
    assert "| perplexity |" in md and "| mode | language model |" in md
    assert report["pretrained"] == "pretrained" and "pretrained/ (from_pretrained)" in said
    plain = AutoModelForCausalLM.from_pretrained(out / "pretrained")  # uniform widths: plain transformers
    assert plain.config.intermediate_size == 64 and (out / "pretrained" / "tokenizer.json").is_file()
    assert perplexity(plain, test) == pytest.approx(after, rel=1e-6)


def test_run_on_a_language_model_with_widths_that_differ_writes_model_cuttree_alone(
    lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config holds one MLP width: with one layer pruned harder, ``run`` warns and writes no folder."""
    out, text = lm.parent / "run", f"text:{lm.parent / 'prose.txt'}"
    (lm.parent / "cut.yaml").write_text(
        "ratio: 0.5\ncriterion: wanda\nlatency_runs: 1\nfinetune: {epochs: 0.25, batch_size: 4}\n"
        'layers: {"model.layers.0.mlp.*": {ratio: 0.25}}\n'
    )
    argv = args(lm, "run", "--hf", str(lm), "--config", str(lm.parent / "cut.yaml"), "--data", text,
                "--windows", "2", "--out", str(out), "--quiet")  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().err
    assert "no from_pretrained folder written, model.cuttree alone holds the model" in said
    assert "keep different MLP widths ([64, 96])" in said
    assert not (out / "pretrained").exists() and json.loads((out / "report.json").read_text()).get("pretrained") is None
    assert cuttree.load(out / "model.cuttree").model.layers[0].mlp.gate_proj.out_features == 96


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["prune", "--hf", "a", "--gguf", "b.gguf", "--out", "x.cuttree", "--set", "ratio=0.5"],
            "give --hf DIR or --gguf FILE, not both",
        ),
        (
            ["prune", "--gguf", "model.bin", "--out", "x.cuttree", "--set", "ratio=0.5"],
            "--gguf 'model.bin' is not a .gguf file",
        ),
        (["eval", "--metric", "perplexity", "--data", "botchan"], "eval needs a model: a .cuttree file"),
        (["eval", "m.cuttree", "--metric", "perplexity", "--data", "botchan"], "holds no tokenizer; give --tokenizer"),
        (["prune", "--hf", "missing", "--out", "x.cuttree", "--set", "ratio=0.5"], "'missing' does not exist"),
    ],
)
def test_language_model_command_lines_that_cannot_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.cuttree").exists()
