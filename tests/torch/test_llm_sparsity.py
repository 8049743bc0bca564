"""One-shot sparsity of language models, layer by layer: Wanda and SparseGPT against a reference
written from the papers (bench/_llm_reference.py, which does not import cuttree), ties broken
without favouring positions, perplexity against Hugging Face's own loss, text windows, files."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import cuttree
from cuttree.core.masks import nm_masks, tie_order
from cuttree.core.obs import sparsegpt
from cuttree.datasets import lm_text
from cuttree.frontends.torch.language import perplexity
from cuttree.frontends.torch.layerwise import decoder_stack

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_llm_reference", ROOT / "bench" / "_llm_reference.py")
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def ids(rows: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (rows, 32), generator=torch.Generator().manual_seed(seed))


def config(criterion: str, nm: str | None = None, **kw: object) -> cuttree.Config:
    budget: dict[str, object] = {"nm": nm} if nm else {"ratio": 0.5}
    return cuttree.Config(method="unstructured", criterion=criterion, min_samples=8, calib_samples=8, **budget, **kw)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if n.endswith(LINEARS)}


@pytest.mark.parametrize("nm", [None, "2:4"])
def test_wanda_masks_equal_the_papers_procedure(nm: str | None) -> None:
    """Per output row at 50% (``scope: row``), decoder layer by decoder layer: the same masks as the
    reference, every one of the 14 layers (not merely close)."""
    calib = ids()
    ref = tiny()
    reference.prune_reference(ref, calib, "wanda", sparsity=0.5, nm=(2, 4) if nm else None)
    got = cuttree.sparsify(tiny(), config("wanda", nm, scope="row"), calib_data=[c[None] for c in calib])
    theirs = weights(ref)
    assert len(theirs) == 14 and got.masks.keys() == theirs.keys()
    for name, w in theirs.items():
        assert torch.equal(got.masks[name], w != 0), name
        assert torch.equal(weights(got.model)[name], w), name
    assert got.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("nm", [None, "2:4"])
def test_sparsegpt_weights_within_1e_5_of_the_papers_procedure(nm: str | None) -> None:
    calib = ids()
    ref = tiny()
    reference.prune_reference(ref, calib, "sparsegpt", sparsity=0.5, nm=(2, 4) if nm else None)
    got = cuttree.sparsify(tiny(), config("sparsegpt", nm), calib_data=[c[None] for c in calib])
    for name, w in weights(ref).items():
        assert torch.equal(got.masks[name], w != 0), name
        assert float((weights(got.model)[name] - w).abs().max()) < 1e-5, name
    dense = tiny()
    moved = float(
        (weights(got.model)["model.layers.1.mlp.down_proj"] - weights(dense)["model.layers.1.mlp.down_proj"])[
            got.masks["model.layers.1.mlp.down_proj"]
        ]
        .abs()
        .max()
    )
    assert moved > 1e-3  # the kept weights were updated, not merely masked


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_owl_gives_each_layer_the_papers_sparsity(criterion: str) -> None:
    """OWL: the dense model's outlier shares put one decoder layer at 50% - spread and the other at
    50% + spread (two layers: the ends of the range), and the weights equal the reference's."""
    calib = ids()
    ref = tiny()
    reference.prune_reference(ref, calib, criterion, sparsity=0.5, owl=(2.0, 0.1))
    owl = {"allocation": "owl", "owl": {"m": 2.0, "spread": 0.1}}
    got = cuttree.sparsify(tiny(), config(criterion, **owl, scope="row"), calib_data=[c[None] for c in calib])
    for name, w in weights(ref).items():
        assert torch.equal(got.masks[name], w != 0), name
        assert float((weights(got.model)[name] - w).abs().max()) < 1e-5, name
    per_block = [
        float(
            np.mean([1 - float(m.double().mean()) for n, m in got.masks.items() if n.startswith(f"model.layers.{i}.")])
        )
        for i in range(2)
    ]
    assert sorted(round(s, 1) for s in per_block) == [0.4, 0.6]  # 25 of 64 per row: 0.39
    assert got.sparsity == pytest.approx(0.5, abs=0.01)


def test_magnitude_masks_equal_the_reference() -> None:
    ref = tiny()
    reference.prune_reference(ref, ids(), "magnitude", sparsity=0.5)
    got = cuttree.sparsify(tiny(), config("l1"))
    for name, w in weights(ref).items():
        assert torch.equal(got.masks[name], w != 0), name


def test_ties_position_is_the_references_rule_on_quantised_weights() -> None:
    """Weights of two magnitudes, no zero (a 4-bit origin has few): magnitude 2:4 with ``ties:
    position`` gives the reference's masks exactly; the seeded default orders ties otherwise."""

    def quantised() -> LlamaForCausalLM:
        model = tiny()
        with torch.no_grad():
            for w in weights(model).values():
                w.copy_(torch.where(w < 0, -1.0, 1.0) * torch.where(w.abs() > 0.02, 2.0, 1.0) / 40)
        return model

    ref = quantised()
    reference.prune_reference(ref, ids(), "magnitude", nm=(2, 4))
    by_position = cuttree.sparsify(quantised(), config("l1", "2:4", ties="position"))
    seeded = cuttree.sparsify(quantised(), config("l1", "2:4"))
    theirs = {n: w != 0 for n, w in weights(ref).items()}
    assert all(torch.equal(by_position.masks[n], k) for n, k in theirs.items())
    assert sum(int((seeded.masks[n] != k).sum()) for n, k in theirs.items()) > 1000


def test_sequential_calibrates_each_layer_on_the_pruned_layers_before_it() -> None:
    calib = [c[None] for c in ids()]
    seq = cuttree.sparsify(tiny(), config("wanda", scope="row"), calib_data=calib)
    one_pass = cuttree.sparsify(tiny(), config("wanda", scope="row", sequential=False), calib_data=calib)
    first = [n for n in seq.masks if n.startswith("model.layers.0.")]
    later = [n for n in seq.masks if n.startswith("model.layers.1.")]
    # the first layer's inputs are the dense model's either way; the second's differ
    assert all(torch.equal(seq.masks[n], one_pass.masks[n]) for n in first)
    assert any(not torch.equal(seq.masks[n], one_pass.masks[n]) for n in later)


def test_ties_are_broken_without_favouring_positions() -> None:
    """Every weight equal in magnitude: 2:4 prunes each position of a group as often as the others
    (the reference's stable sort prunes positions 0 and 1 every time), and the choice is a
    function of the seed alone."""
    score = {"w": np.ones((256, 64))}
    keep = nm_masks(score, 2, 4, {"w": 1}, seed=0)["w"]
    pruned = (~keep).reshape(256, 16, 4).sum(axis=(0, 1))
    assert pruned.tolist() == [2019, 2063, 2036, 2074]  # of 8192 prunes, 2048 each if exactly even
    assert (keep.reshape(256, 16, 4).sum(-1) == 2).all()
    assert np.array_equal(keep, nm_masks(score, 2, 4, {"w": 1}, seed=0)["w"])
    assert not np.array_equal(keep, nm_masks(score, 2, 4, {"w": 1}, seed=1)["w"])
    assert tie_order((2, 3), None) is None and np.array_equal(tie_order((2, 3), 0), tie_order((2, 3), 0))


def test_sparsegpt_prunes_exactly_the_ratio_of_every_block() -> None:
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((8, 256)), rng.standard_normal((512, 256))
    new, keep = sparsegpt(w, 2 / 512 * x.T @ x, 0.5, None)
    assert keep.shape == w.shape and int((~keep[:, :128]).sum()) == 512 and int((~keep).sum()) == 1024
    assert np.array_equal(new == 0, ~keep)


def test_perplexity_is_huggingfaces_next_token_loss() -> None:
    """exp of the mean NLL over every predicted token: with windows of one length, the mean of
    Hugging Face's per-window ``loss``."""
    model, windows = tiny(), ids(6, seed=3)
    with torch.no_grad():
        losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert perplexity(model, windows, batch_size=4) == pytest.approx(math.exp(sum(losses) / 6), rel=1e-6)
    with pytest.raises(ValueError, match=r"windows of shape \(32,\)"):
        perplexity(model, windows[0])


def test_a_pruned_language_model_saves_and_reloads_to_the_same_perplexity(tmp_path: Path) -> None:
    got = cuttree.sparsify(tiny(), config("sparsegpt", "2:4"), calib_data=[c[None] for c in ids()])
    test = ids(4, seed=5)
    want = perplexity(got.model, test)
    path = cuttree.save(got, tmp_path / "lm.cuttree", arch="cuttree.models:causal_lm",
                        arch_kwargs={"config": got.model.config.to_dict()})  # fmt: skip
    assert perplexity(cuttree.load(path), test) == want
    plain = cuttree.strip(got.model)  # the masks folded into plain weights
    # a Hugging Face model itself, not a result (it has a .model of its own: the base model)
    path = cuttree.save(plain, tmp_path / "plain.cuttree", arch="cuttree.models:causal_lm",
                        arch_kwargs={"config": plain.config.to_dict()}, plan=cuttree.PruningPlan(groups=()))  # fmt: skip
    assert perplexity(cuttree.load(path), test) == want
    plain.save_pretrained(tmp_path / "hf")
    assert perplexity(LlamaForCausalLM.from_pretrained(tmp_path / "hf"), test) == want


def test_the_decoder_stack_and_the_layers_outside_it() -> None:
    model = tiny()
    assert decoder_stack(model) is not None and decoder_stack(model)[0] == "model.layers"  # type: ignore[index]
    cfg = cuttree.Config(method="unstructured", criterion="wanda", ratio=0.5, min_samples=8, calib_samples=8,
                         layers={"lm_head": {"ratio": 0.5}})  # fmt: skip
    with pytest.raises(ValueError, match="per-layer overrides \\(lm_head\\)"):
        cuttree.sparsify(model, cfg, calib_data=[c[None] for c in ids()])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "unstructured", "criterion": "l1", "ratio": 0.5, "sequential": True}, "reads no data"),
        ({"criterion": "l1", "ratio": 0.5, "scope": "row"}, "scope: row compares the weights of each output row"),
        ({"method": "unstructured", "criterion": "sparsegpt", "threshold": 0.5}, "takes ratio or nm, not threshold"),
        ({"criterion": "l1", "ratio": 0.5, "sequential": True}, "set method: unstructured"),
        ({"criterion": "l1", "ratio": 0.5, "allocation": "owl"}, "set method: unstructured"),
        ({"method": "unstructured", "criterion": "l1", "ratio": 0.5, "allocation": "owl"}, "criterion wanda or"),
        ({"method": "unstructured", "criterion": "wanda", "nm": "2:4", "allocation": "owl"}, "no nm"),
        ({"method": "unstructured", "criterion": "wanda", "ratio": 0.05, "allocation": "owl"}, "at most 0.05"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cuttree.Config(**settings)


def test_too_few_calibration_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        cuttree.sparsify(tiny(), config("wanda"), calib_data=[c[None] for c in ids(4)])


def test_text_windows_and_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Chars:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [ord(c) for c in text]}

    (tmp_path / "b.txt").write_text("efgh", encoding="utf-8")
    (tmp_path / "a.txt").write_text("abcd", encoding="utf-8")
    assert lm_text.text(f"text:{tmp_path}") == "abcd\n\nefgh"
    assert lm_text.windows(Chars(), "abcdefghij", length=3, count=2, skip=1).tolist() == [
        [100, 101, 102],
        [103, 104, 105],
    ]
    with pytest.raises(ValueError, match="3 windows of 4 tokens asked for, after 0; the text has 2"):
        lm_text.windows(Chars(), "abcdefghij", length=4, count=3)
    monkeypatch.setenv("CUTTREE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="run `make llm`"):
        lm_text.text("botchan")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "botchan.txt").write_text(
        "licence\n*** START OF THE BOOK ***\nThe story.\n*** END OF IT", encoding="utf-8"
    )
    assert lm_text.text("botchan") == "The story."
    with pytest.raises(ValueError, match="unknown text 'wikitext'"):
        lm_text.text("wikitext")
