"""The hidden width of a language model through its RMS norms: the embedding columns, every
projection's input or output features, every norm's scale and ``lm_head`` are one group; the norms'
scales are multiplied by √(d / d_kept), so the pruned model computes what the original does with
the removed channels zeroed (the oracle here), up to the norms' ``eps``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.torch.test_attention import reload_without_cuttree
from torch import nn

import cuttree

NO_MLP_NO_HEADS = {"head_ratio": 0.0, "ignore": ["*.gate_proj", "*.up_proj"]}


def _lm(transformers: Any, kind: str = "llama") -> nn.Module:
    """A random two-layer LLaMA (or Gemma: norms scale by 1 + weight, embeddings by √hidden) of
    hidden width 64 with norms of eps 1e-12, so that zeroed channels leave the statistic exact."""
    torch.manual_seed(0)
    common = {
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-12,
        "max_position_embeddings": 64,
    }  # fmt: skip
    if kind == "gemma":
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**common))
        with torch.no_grad():  # Gemma's norms start at weight 0 (scale 1): give them some spread
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.normal_(0, 0.3)
        return model.eval()  # type: ignore[no-any-return]
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()  # type: ignore[no-any-return]


def _zeroed(model: nn.Module, gone: list[int]) -> nn.Module:
    """The oracle: ``model`` with the ``gone`` channels of its residual stream zeroed (embedding
    columns, the rows of the projections that write to the stream)."""
    oracle = copy.deepcopy(model)
    g = torch.tensor(gone)
    with torch.no_grad():
        oracle.model.embed_tokens.weight[:, g] = 0
        for layer in oracle.model.layers:
            layer.self_attn.o_proj.weight[g] = 0
            layer.mlp.down_proj.weight[g] = 0
    return oracle


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_the_hidden_width_prunes_through_rms_norms_exactly(kind: str) -> None:
    """Ratio 0.25 of 64 keeps 48 hidden channels; heads and MLP widths are kept (head_ratio 0,
    gate/up ignored). Logits equal the oracle's within 1e-5; every norm's effective scale (Gemma:
    1 + weight) is the original's kept entries × √(64/48)."""
    transformers = pytest.importorskip("transformers")
    model = _lm(transformers, kind)
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    r = cuttree.prune(
        model, (ids[:1],), cuttree.Config(ratio=0.25, criterion="random", latency_runs=0, **NO_MLP_NO_HEADS)
    )
    (hidden,) = [g for g in r.plan if len(g.keep) < g.size]
    names = {m.tensor for m in hidden.members}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.post_attention_layernorm.weight"} <= names
    assert (hidden.size, len(hidden.keep)) == (64, 48)
    assert r.model.model.embed_tokens.embedding_dim == 48 and r.model.model.layers[0].mlp.gate_proj.out_features == 96
    offset = 1.0 if kind == "gemma" else 0.0
    keep = torch.tensor(hidden.keep)
    want = (model.model.norm.weight[keep] + offset) * (64 / 48) ** 0.5
    torch.testing.assert_close(r.model.model.norm.weight + offset, want, rtol=1e-6, atol=1e-6)
    oracle = _zeroed(model, sorted(set(range(64)) - set(hidden.keep)))
    with torch.no_grad():
        torch.testing.assert_close(r.model(ids).logits, oracle(ids).logits, rtol=1e-5, atol=1e-5)


def test_an_rms_norm_without_a_scale_keeps_its_channels() -> None:
    """torch's ``nn.RMSNorm``: with a scale, the channels before it are one prunable group (and
    exact, as above); without one (nothing to rescale) they are pinned, so only the inner width goes."""
    torch.manual_seed(0)
    for affine, kept in ((True, (8, 4)), (False, (16, 4))):
        model = nn.Sequential(nn.Linear(4, 16), nn.RMSNorm(16, eps=1e-12, elementwise_affine=affine), nn.Linear(16, 4))
        model.eval()
        x = torch.randn(3, 4)
        cfg = cuttree.Config(ratio=0.5, criterion="random", latency_runs=0)
        if affine:
            r = cuttree.prune(copy.deepcopy(model), (x,), cfg)
        else:
            with pytest.warns(
                UserWarning, match=r"nothing in this model can be pruned.*\(0: an operation cuttree cannot"
            ):
                r = cuttree.prune(copy.deepcopy(model), (x,), cfg)
        assert (r.model[0].out_features, r.model[2].out_features) == kept
        if affine:
            (g,) = r.plan.groups
            oracle = copy.deepcopy(model)
            with torch.no_grad():
                oracle[0].weight[sorted(set(range(16)) - set(g.keep))] = 0
                oracle[0].bias[sorted(set(range(16)) - set(g.keep))] = 0
                torch.testing.assert_close(r.model(x), oracle(x), rtol=1e-5, atol=1e-6)
            assert r.model[1].normalized_shape == (8,)


def test_a_hidden_pruned_llama_saves_and_loads_without_cuttree(tmp_path: Path) -> None:
    """``save_pretrained`` writes ``hidden_size`` 48; plain ``from_pretrained`` in a fresh process
    (cuttree not importable) gives the pruned model's logits."""
    transformers = pytest.importorskip("transformers")
    from cuttree.files.huggingface import save_pretrained

    model = _lm(transformers)
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    r = cuttree.prune(model, (ids[:1],), cuttree.Config(ratio=0.25, criterion="random", latency_runs=0, uniform=True))
    folder = save_pretrained(r.model, tmp_path / "narrow", (ids[:1],))
    done = reload_without_cuttree(r.model, folder, ids, tmp_path, "c.hidden_size, c.intermediate_size")
    assert done == ["48", "72", "True"]
