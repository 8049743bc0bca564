"""Attention heads found from the trace: exact head counts, a masked-original oracle, patched
attributes, and grouped-query attention (HF LLaMA) never losing a kv head without its query heads."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cuttree
from cuttree.core.plan import HEAD_UNITS
from cuttree.frontends.torch.attention import PrunableMultiheadAttention, supported, swapped


class Tiny(nn.Module):
    """embed → x + MHA(x) → head: the residual is the embed's output, the heads are MHA's."""

    def __init__(self, e: int = 16, heads: int = 4, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(6, e)
        self.attn = nn.MultiheadAttention(e, heads, batch_first=batch_first)
        self.head = nn.Linear(e, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(h + self.attn(h, h, h, need_weights=False)[0])


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_prunable_mha_computes_what_multihead_attention_does(batch_first: bool, need_weights: bool) -> None:
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    p = swapped(copy.deepcopy(m))
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    float_mask = torch.randn(5, 7)
    cases = [
        {},
        {"attn_mask": causal},
        {"attn_mask": float_mask},
        {"attn_mask": causal, "key_padding_mask": padding},
        {"key_padding_mask": padding, "average_attn_weights": False},
    ]
    with torch.no_grad():
        for kw in cases:
            want = m(q, kv, kv, need_weights=need_weights, **kw)
            got = p(q, kv, kv, need_weights=need_weights, **kw)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            if need_weights:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        unbatched = q[:, 0] if not batch_first else q[0]
        torch.testing.assert_close(p(unbatched, unbatched, unbatched)[0], m(unbatched, unbatched, unbatched)[0])
    assert not supported(nn.MultiheadAttention(16, 4, kdim=8, vdim=8))  # separate k/v widths: kept whole
    assert not supported(nn.MultiheadAttention(16, 4, add_bias_kv=True))


def test_heads_are_found_from_the_trace_with_exact_counts() -> None:
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(2, 5, 6)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, ignore=["embed"], latency_runs=0))
    [g] = list(r.plan)
    assert (g.name, g.unit, g.size, len(g.keep)) == ("attn", "heads", 4, 2)  # 4 heads of width 4, two kept
    assert r.plan.table().splitlines()[2].split()[:3] == ["attn", "heads", "4"]
    a = r.model.attn
    assert isinstance(a, PrunableMultiheadAttention) and (a.num_heads, a.head_dim, a.embed_dim) == (2, 4, 16)
    assert tuple(a.in_proj_weight.shape) == (3 * 2 * 4, 16) and tuple(a.out_proj.weight.shape) == (16, 8)
    assert type(model.attn) is nn.MultiheadAttention  # the original is untouched
    assert out(r.model, x).shape == (2, 5, 3)


def test_pruned_heads_equal_the_original_with_those_heads_zeroed() -> None:
    """The oracle: removing heads physically = zeroing their q/k/v rows and output-projection columns."""
    torch.manual_seed(0)
    model, x = Tiny(e=24, heads=6), torch.randn(3, 7, 6)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, ignore=["embed"], latency_runs=0))
    [g] = list(r.plan)
    gone = sorted(set(range(6)) - set(g.keep))
    assert len(gone) == 3
    masked = copy.deepcopy(model)
    rows = torch.tensor([s * 24 + h * 4 + d for s in range(3) for h in gone for d in range(4)])
    cols = torch.tensor([h * 4 + d for h in gone for d in range(4)])
    with torch.no_grad():
        masked.attn.in_proj_weight[rows] = 0
        masked.attn.in_proj_bias[rows] = 0
        masked.attn.out_proj.weight[:, cols] = 0
    torch.testing.assert_close(out(r.model, x), out(masked, x), rtol=1e-5, atol=1e-6)
    kept = torch.tensor([h * 4 + d for h in g.keep for d in range(4)])
    assert torch.equal(r.model.attn.out_proj.weight, model.attn.out_proj.weight[:, kept])


@pytest.mark.parametrize("batch_first", [True, False])
def test_prune_nothing_is_bit_identical_and_keeps_the_stock_class(batch_first: bool) -> None:
    torch.manual_seed(0)
    model, x = Tiny(batch_first=batch_first), torch.randn(2, 5, 6)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.0, latency_runs=0))
    assert torch.equal(out(r.model, x), out(model, x))
    assert type(r.model.attn) is nn.MultiheadAttention


def test_residual_heads_and_mlp_together_macs_match_the_flop_counter() -> None:
    from cuttree.frontends.torch.measure import count_macs

    torch.manual_seed(0)
    model, x = Tiny(e=32, heads=4), torch.randn(2, 9, 6)
    r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, latency_runs=0))
    a = r.model.attn
    assert (a.num_heads, a.embed_dim, r.model.embed.out_features) == (2, 16, 16)
    assert r.plan.macs_after == r.after.macs == count_macs(r.model, (x,))
    assert r.before.macs == count_macs(model, (x,))  # attention products counted before and after


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vit_heads_and_attributes(name: str) -> None:
    timm_ = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm_.create_model(name, pretrained=False, img_size=32, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept whole for a reason the user must hear about
        r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, latency_runs=0))
    for blk in r.model.blocks:
        a = blk.attn
        assert (a.num_heads, a.head_dim, a.attn_dim) == (2, 64, 128)  # 3 heads, floor(1.5) removed
        assert tuple(a.qkv.weight.shape) == (3 * 128, 96) and tuple(a.proj.weight.shape) == (96, 128)
    assert out(r.model, x).shape == (1, 10)


def pruned_bert(transformers: Any, layers: int) -> tuple[Any, torch.Tensor]:
    """A random 4-head BertModel pruned at ratio 0.5, and its example token ids."""
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64
    )
    ids = torch.randint(0, 50, (2, 9))
    return cuttree.prune(transformers.BertModel(cfg).eval(), (ids,), cuttree.Config(ratio=0.5, latency_runs=0)), ids


def test_hugging_face_bert_and_vit_heads_and_attributes() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every attention module's heads found: no warning
        warnings.filterwarnings("ignore", "criterion 'l1' scores a language model")  # the mechanics, on l1
        r, ids = pruned_bert(transformers, layers=2)
    for layer in r.model.encoder.layer:
        sa = layer.attention.self
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (2, 8, 16)
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 16
    with torch.no_grad():
        assert r.model(ids).last_hidden_state.shape == (2, 9, 32)  # a model output: its width stays
    vit = transformers.ViTModel(
        transformers.ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).eval()
    r = cuttree.prune(vit, (torch.randn(1, 3, 32, 32),), cuttree.Config(ratio=0.5, latency_runs=0))
    a = r.model.layers[0].attention
    assert (a.num_attention_heads, a.q_proj.out_features, a.o_proj.in_features) == (2, 16, 16)


def tiny_llama(transformers: Any, attention: str = "sdpa") -> nn.Module:
    """A random LlamaForCausalLM with grouped-query attention: 8 query heads on 2 key/value heads;
    ``attention``: Hugging Face's SDPA path (``enable_gqa``) or its eager one (``repeat_kv``)."""
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,  # 4 query heads per key/value head
        head_dim=8,
        max_position_embeddings=64,
    )
    cfg._attn_implementation = attention
    return transformers.LlamaForCausalLM(cfg).eval()  # type: ignore[no-any-return]


def reload_without_cuttree(model: nn.Module, folder: Path, ids: torch.Tensor, tmp_path: Path, fields: str) -> list[str]:
    """Load ``folder`` with plain ``LlamaForCausalLM.from_pretrained`` in a fresh process where
    cuttree cannot be imported; its printout split: the config ``fields`` (expressions over ``c``)
    and whether its logits on ``ids`` equal ``model``'s within 1e-5."""
    with torch.no_grad():
        torch.save(model(ids).logits, tmp_path / "want.pt")
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch; sys.modules['cuttree'] = None\n"  # cuttree cannot be imported in this process
        "from transformers import LlamaForCausalLM\n"
        f"m = LlamaForCausalLM.from_pretrained({str(folder)!r}).eval()\n"
        f"ids, want = torch.load({str(tmp_path / 'ids.pt')!r}), torch.load({str(tmp_path / 'want.pt')!r})\n"
        f"c = m.config\nprint({fields}, torch.allclose(m(ids).logits, want, atol=1e-5))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()


def tiny_llama_and_texts(transformers: Any) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:func:`tiny_llama` (seed 0) and four texts of 10 token ids with their attention mask, the
    second right-padded after 7 tokens."""
    torch.manual_seed(0)
    model = tiny_llama(transformers)
    ids = torch.randint(0, 100, (4, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return model, ids, mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(("ratio", "kv_kept", "per_kv_kept"), [(0.5, 2, 2), (0.2, 2, 3), (0.6, 1, 3), (0.9, 1, 1)])
def test_grouped_query_attention_loses_kv_heads_with_their_query_heads_and_query_heads_within_every_kv_head(
    ratio: float, kv_kept: int, per_kv_kept: int, attention: str
) -> None:
    """Two crossing units, as for grouped convs: a key/value head with all its query heads, and the
    same positions among every kv head's query heads, so each kv head keeps as many query heads
    (``num_key_value_groups`` patched). The two units share one head budget: the kept query heads
    come nearest to (1 - ratio) of the 8, more kv heads kept between equal counts: 0.5 keeps 2 × 2
    (not 1 × 2, each unit at the ratio), 0.2 keeps 2 × 3 (6.4), 0.6 keeps 1 × 3 (3.2), 0.9 keeps
    1 × 1. Oracle: the removed query heads' columns of ``o_proj`` zeroed (the hidden width is ignored:
    tests/torch/test_llm_hidden.py).
    Both of Hugging Face's paths: SDPA's ``enable_gqa`` and the eager ``repeat_kv`` (expand and merge)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tiny_llama(transformers, attention)
    ids = torch.randint(0, 100, (2, 10))
    r = cuttree.prune(model, (ids[:1],), cuttree.Config(ratio=ratio, latency_runs=0, ignore=["model.embed_tokens"]))
    oracle, plan = copy.deepcopy(model), {g.name: g for g in r.plan}
    for i, layer in enumerate(r.model.model.layers):
        a, a0 = layer.self_attn, model.model.layers[i].self_attn
        g, w = plan[f"model.layers.{i}.self_attn.q_proj"], plan[f"model.layers.{i}.self_attn.q_proj:query_heads"]
        assert (g.unit, g.size, len(g.keep), w.unit, w.size, len(w.keep)) == (
            "heads",
            2,
            kv_kept,
            "query heads",
            4,
            per_kv_kept,
        )
        heads = [4 * kv + p for kv in g.keep for p in w.keep]  # query head h reads kv head h // 4
        assert a.num_key_value_groups == per_kv_kept and a.q_proj.out_features == 8 * len(heads)
        rows = torch.cat([torch.arange(8 * h, 8 * h + 8) for h in heads])
        assert torch.equal(a.q_proj.weight, a0.q_proj.weight[rows])
        assert torch.equal(a.o_proj.weight, a0.o_proj.weight[:, rows])
        assert torch.equal(
            a.k_proj.weight, a0.k_proj.weight[torch.cat([torch.arange(8 * k, 8 * k + 8) for k in g.keep])]
        )
        dead = torch.ones(64, dtype=torch.bool)
        dead[rows] = False
        with torch.no_grad():
            o = oracle.model.layers[i].self_attn.o_proj.weight
            o[:, dead] = 0.0
            gone = ~torch.isin(torch.arange(96), torch.as_tensor(plan[f"model.layers.{i}.mlp.gate_proj"].keep))
            oracle.model.layers[i].mlp.up_proj.weight[gone] = 0.0  # silu(gate) · 0
    with torch.no_grad():
        torch.testing.assert_close(r.model(ids).logits, oracle(ids).logits, rtol=1e-5, atol=1e-6)
        assert r.model.generate(ids[:1], max_new_tokens=16, min_new_tokens=16, do_sample=False).shape == (1, 26)


def test_repeat_kv_copies_are_recognized_in_inputs_of_any_length() -> None:
    """``repeat_kv``'s (batch, kv heads, copies, tokens, width) before its merge: copies expanded
    from one are recognized also where the tensor is too big to compare whole (over 2²² values);
    distinct values, or copies in the width (a zero bias's (heads, width)), are not copies."""
    from cuttree.frontends.torch.ops.views import _kv_copies

    torch.manual_seed(0)
    long = torch.randn(1, 2, 1, 8200, 64).expand(1, 2, 4, 8200, 64).contiguous()
    assert long.numel() > 1 << 22 and _kv_copies(long, [1, 2], 1)
    assert not _kv_copies(torch.randn(1, 2, 4, 8200, 64), [1, 2], 1)
    assert not _kv_copies(torch.zeros(1, 5, 4, 8), [2, 3], 2)  # heads and their width, last


def test_gpt2_loses_heads_mlp_channels_and_residual_width_and_generates() -> None:
    """GPT-2: one fused ``Conv1D`` for q/k/v split by ``split_size`` (patched with the heads), and
    ``Conv1D`` layers (weights stored ``[in, out]``, outputs shaped with ``self.nf``) for the rest."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing kept whole
        warnings.filterwarnings("ignore", "criterion 'l1' scores a language model")  # the mechanics, on l1
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, latency_runs=0))
    assert [(g.name, g.unit, g.size, len(g.keep)) for g in r.plan] == [
        ("transformer.h.0.attn.c_proj", "channels", 32, 16),  # the residual stream
        ("transformer.h.0.attn.c_attn", "heads", 4, 2),
        ("transformer.h.0.mlp.c_fc", "channels", 128, 64),
        ("transformer.h.1.attn.c_attn", "heads", 4, 2),
        ("transformer.h.1.mlp.c_fc", "channels", 128, 64),
    ]
    for block in r.model.transformer.h:
        a, mlp = block.attn, block.mlp
        assert (a.num_heads, a.split_size, a.c_attn.nx, a.c_attn.nf, a.c_proj.nx, a.c_proj.nf) == (
            2,
            16,
            16,
            48,
            16,
            16,
        )
        assert (mlp.c_fc.nx, mlp.c_fc.nf, mlp.c_proj.nx, mlp.c_proj.nf) == (16, 64, 64, 16)
    assert r.plan.macs_after == r.after.macs
    with torch.no_grad():
        assert r.model.generate(ids[:1], max_new_tokens=5, do_sample=False).shape == (1, 14)
    # the MLP alone, against the original with the removed channels zeroed (gelu(0) = 0)
    mlp_only = cuttree.Config(ratio=0.5, head_ratio=0, ignore=("transformer.h.*.attn.c_proj",), latency_runs=0)
    r = cuttree.prune(model, (ids,), mlp_only)
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for g in r.plan:
            if len(g.keep) < g.size:
                assert g.name.endswith("mlp.c_fc")
                gone = sorted(set(range(g.size)) - {int(k) for k in g.keep})
                fc = oracle.get_submodule(g.name)
                fc.weight[:, gone] = 0
                fc.bias[gone] = 0
        torch.testing.assert_close(r.model(ids).logits, oracle(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_mixture_of_experts_lose_the_same_intermediate_channels_in_every_expert(family: str) -> None:
    """Hugging Face's fused experts (weights [experts, 2 × width, hidden] and [experts, hidden,
    width], run by torch._grouped_mm by default): traced through their own loop, the width is one
    group, its gate and up halves coupled by their product; exact against zeroing."""
    transformers = pytest.importorskip("transformers")
    from cuttree.frontends.torch.validate import zeroed

    torch.manual_seed(0)
    sizes = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    if family == "mixtral":
        cfg = transformers.MixtralConfig(
            **sizes, intermediate_size=64, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2
        )
        model, width = transformers.MixtralForCausalLM(cfg), 64
    else:
        cfg = transformers.Qwen2MoeConfig(
            **sizes,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=40,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
        )
        model, width = transformers.Qwen2MoeForCausalLM(cfg), 48
    model.eval()
    ids = torch.randint(0, 100, (2, 9))
    r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, latency_runs=0))
    [g] = [g for g in r.plan if g.name == "model.layers.0.mlp.experts"]
    assert (g.size, len(g.keep)) == (width, width // 2)
    experts = r.model.model.layers[0].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (4, width, 32) and tuple(experts.down_proj.shape) == (4, 32, width // 2)
    assert experts.intermediate_dim == width // 2 and type(experts).__name__.endswith("Experts")  # class restored
    with torch.no_grad():
        torch.testing.assert_close(r.model(ids).logits, zeroed(model, r.plan)(ids).logits, rtol=1e-5, atol=1e-6)
    # no layer's output holds the experts' width: the activation criterion scores it by weight, and says so
    calib = [{"input_ids": torch.randint(0, 100, (4, 9))} for _ in range(2)]
    plan = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, criterion="activation", latency_runs=0), calib).plan
    by_name = {g.name: g for g in plan}
    assert by_name["model.layers.0.mlp.experts"].criterion == "l1"
    assert by_name["model.layers.0.mlp.experts"].keep == g.keep  # l1 is the default that made the first plan


def test_attention_without_heads_found_is_kept_whole_with_a_warning() -> None:
    """BLOOM's fused q/k/v is viewed as (…, heads, 3, width): no split into heads the trace follows."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(
        transformers.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)
    ).eval()
    ids = torch.randint(0, 100, (2, 9))
    with pytest.warns(UserWarning) as caught:
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, latency_runs=0))
    said = [str(w.message) for w in caught if str(w.message).startswith("kept the attention heads")]
    assert {w.filename for w in caught if str(w.message).startswith("kept")} == {__file__}  # the caller's line
    assert len(said) == 1 and said[0].startswith(
        "kept the attention heads of 2 module(s) whole (BloomAttention: transformer.h.0.self_attention, "
        "transformer.h.1.self_attention): the trace found no split into heads"
    )
    assert not [g for g in r.plan if g.unit == "heads"] and r.after.params < r.before.params
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, head_ratio=0, latency_runs=0))
    assert not [w for w in caught if str(w.message).startswith("kept the attention heads")]  # none asked for


def test_save_pretrained_loads_without_cuttree_or_refuses_cleanly(tmp_path: object) -> None:
    transformers = pytest.importorskip("transformers")
    from cuttree.files.huggingface import save_pretrained

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 10))
    r = cuttree.prune(tiny_llama(transformers), (ids,), cuttree.Config(ratio=0.5, latency_runs=0))
    folder = save_pretrained(r.model, tmp_path / "llama_half", (ids,))  # type: ignore[operator]
    done = reload_without_cuttree(
        r.model, folder, ids, tmp_path, "c.num_attention_heads, c.num_key_value_heads, c.intermediate_size"
    )  # type: ignore[arg-type]
    assert done == ["4", "2", "48", "True"]  # both kv heads, 2 of the 4 query heads of each

    r, ids = pruned_bert(transformers, layers=1)
    with pytest.raises(
        cuttree.FileFormatError, match=r"config cannot describe the pruned sizes .* save it as \.cuttree"
    ):
        save_pretrained(r.model, tmp_path / "bert_half", (ids,))  # type: ignore[operator]
    assert not (tmp_path / "bert_half").exists()  # type: ignore[operator]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.pt", "llama_half", "want.pt"]  # type: ignore[attr-defined]


def test_head_ratio_sets_the_share_of_heads_apart_from_ratio() -> None:
    torch.manual_seed(0)
    model, x = Tiny(e=32, heads=4), torch.randn(2, 5, 6)
    keep_heads = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, head_ratio=0.0, latency_runs=0)).model
    assert (keep_heads.attn.num_heads, keep_heads.embed.out_features) == (4, 16)
    fewer = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, head_ratio=0.75, latency_runs=0)).model
    assert (fewer.attn.num_heads, fewer.embed.out_features) == (1, 16)
    half_macs = cuttree.prune(model, (x,), cuttree.Config(macs_target=0.5, head_ratio=0.0, latency_runs=0))
    assert half_macs.model.attn.num_heads == 4 and half_macs.after.macs <= 0.5 * half_macs.before.macs
    with pytest.raises(ValueError, match="head_ratio"):
        cuttree.Config(ratio=0.5, head_ratio=1.0)


class ElsewhereCountedAttention(nn.Module):
    """Attention that reads its head count from an attribute no rule patches, with a -1 width:
    after pruning, shapes still fit but the heads would be silently regrouped."""

    def __init__(self, e: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.head_dim, self.config_heads = e // heads, heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(e, e) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.config_heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.o_proj(y.transpose(1, 2).reshape(b, n, -1))


ElsewhereCountedAttention.__module__ = "transformers.models.fake.modeling_fake"  # looks like a Hugging Face attention


def test_heads_that_would_be_silently_regrouped_are_kept_whole() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), ElsewhereCountedAttention(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 6)
    with pytest.warns(UserWarning, match=r"kept the attention heads whole \(1\.q_proj\)"):
        r = cuttree.prune(model, (x,), cuttree.Config(ratio=0.5, ignore=["0", "1.o_proj"], latency_runs=0))
    assert r.model[1].q_proj.out_features == 16  # every head kept
    torch.testing.assert_close(out(r.model, x), out(model, x))


HF_DECODERS: dict[str, Any] = {  # config class, model class, config arguments (4 heads, 2 layers, tiny widths)
    "opt": ("OPTConfig", "OPTForCausalLM", {"hidden_size": 32, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"hidden_size": 32, "intermediate_size": 64}),
    "phi": ("PhiConfig", "PhiForCausalLM", {"hidden_size": 32, "intermediate_size": 64}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"hidden_size": 32, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"hidden_size": 32, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64}),
    # eager repeat_kv, and a per-head attention sink held by the attention module itself
    "granite_swa": ("GraniteSWAConfig", "GraniteSWAForCausalLM", {"hidden_size": 32, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64}),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", {"n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"hidden_size": 32, "bos_token_id": 0, "eos_token_id": 0}),
    "albert": ("AlbertConfig", "AlbertModel", {"embedding_size": 16, "hidden_size": 32, "intermediate_size": 64}),
    "electra": ("ElectraConfig", "ElectraModel", {"embedding_size": 16, "hidden_size": 32, "intermediate_size": 64}),
    "mpnet": ("MPNetConfig", "MPNetModel", {"hidden_size": 32, "intermediate_size": 64}),
    "xlm_roberta": ("XLMRobertaConfig", "XLMRobertaModel", {"hidden_size": 32, "intermediate_size": 64}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {"dim": 32, "hidden_dim": 64}),
    "t5_encoder": ("T5Config", "T5EncoderModel", {"d_model": 32, "d_kv": 8, "d_ff": 64}),  # one relative bias for every layer
    "deberta_v2": ("DebertaV2Config", "DebertaV2Model", {"hidden_size": 32, "intermediate_size": 64}),
    "gemma_mqa": ("GemmaConfig", "GemmaForCausalLM", {"hidden_size": 32, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 64}),
    "gemma_mqa_eager": (  # the products as batched matmuls over batch × heads
        "GemmaConfig",
        "GemmaForCausalLM",
        {"hidden_size": 32, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 64, "attn_implementation": "eager"},
    ),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", {"n_embd": 32, "n_inner": 64}),  # multi-query, fused
    "gpt_bigcode_mha": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", {"n_embd": 32, "n_inner": 64, "multi_query": False}),
    "persimmon": ("PersimmonConfig", "PersimmonForCausalLM", {"hidden_size": 32, "intermediate_size": 64}),  # (heads, 3, width)
    "xglm": ("XGLMConfig", "XGLMModel", {"d_model": 32, "ffn_dim": 64}),  # reshapes the heads to self.embed_dim
    "bart": (
        "BartConfig",
        "BartModel",
        {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64},
    ),
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(HF_DECODERS))
def test_hugging_face_heads_equal_the_original_with_those_heads_zeroed(arch: str) -> None:
    """Heads only (``ratio: 0``, ``head_ratio: 0.5``): the pruned model computes what the original
    does with the removed heads' columns of the output projection zeroed (fused q/k/v in GPT-NeoX and GPT-2,
    rotary embeddings in GPT-J/Phi/Gemma, per-head norms in Qwen3, shared layers in ALBERT)."""
    transformers = pytest.importorskip("transformers")
    cfg_name, model_name, kwargs = HF_DECODERS[arch]
    defaults = {"vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**{**defaults, **kwargs})).eval()
    ids = torch.randint(3, 100, (2, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every attention module's heads are found
        warnings.filterwarnings("ignore", "criterion 'l1' scores a language model")  # the mechanics, on l1
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.0, head_ratio=0.5, latency_runs=0))
    heads = [g for g in r.plan if g.unit in HEAD_UNITS]  # under grouped-query attention, query heads too
    by_name = {g.name: g for g in heads}
    for g in heads:  # half the query heads: a kv heads group shares the budget with its :query_heads
        if g.unit == "query heads" and g.name.removesuffix(":query_heads") in by_name:
            continue
        q = by_name.get(f"{g.name}:query_heads")
        kept, size = len(g.keep) * (len(q.keep) if q else 1), g.size * (q.size if q else 1)
        assert 2 * kept == size, g.name
    assert heads
    oracle = copy.deepcopy(model)
    params = dict(oracle.named_parameters(remove_duplicate=False))
    zeroed = 0
    with torch.no_grad():
        for g in heads:
            dead = np.ones(g.size, dtype=bool)
            dead[list(g.keep)] = False
            for m in g.members:  # the output projection's inputs: dim 1 of a Linear weight, 0 of GPT-2's Conv1D
                layer = oracle.get_submodule(m.tensor.rsplit(".", 1)[0])
                in_dim = 1 if isinstance(layer, nn.Linear) else 0 if type(layer).__name__ == "Conv1D" else None
                if m.tensor.endswith("weight") and m.dim == in_dim:
                    params[m.tensor].index_fill_(in_dim, torch.as_tensor(m.positions[dead[m.channels]]), 0.0)
                    zeroed += 1
        assert zeroed >= len(heads)
        want = oracle(ids)[0]
        assert not torch.allclose(want, model(ids)[0], atol=1e-3)  # zeroing the heads changes the outputs
        torch.testing.assert_close(r.model(ids)[0], want, rtol=1e-5, atol=1e-6)


def test_deberta_relative_attention_is_measured_and_pruned_with_its_heads_kept_whole() -> None:
    """DeBERTa-v2/v3's relative attention passes a parameter (the relative embeddings) to its key
    projection: torch's FLOP counter failed on it under ``no_grad`` until cuttree froze the
    parameters while counting. Its disentangled attention has no head split the trace can follow:
    the heads stay, with the warning naming the modules, and the rest is pruned."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
    )  # fmt: skip
    model = transformers.DebertaV2Model(config).eval()
    ids = torch.randint(3, 100, (2, 12))
    with pytest.warns(UserWarning, match="DisentangledSelfAttention: encoder.layer.0.attention.self"):
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.5, latency_runs=0))
    assert not [g for g in r.plan if g.unit == "heads"]
    assert r.plan.macs_before == r.before.macs and r.plan.macs_after == r.after.macs < r.before.macs
    assert r.model(ids)[0].shape == (2, 12, 32)
    assert all(p.requires_grad for p in model.parameters())  # the flags are restored


def test_taylor_on_a_causal_lm_scores_next_token_prediction_on_the_calibration_text() -> None:
    """No labels needed: the loss is next-token cross-entropy on the text itself, padding ignored.
    Oracle: the gradients of that loss written out here (shifted logits, ``ignore_index=-100``)."""
    transformers = pytest.importorskip("transformers")
    from cuttree.frontends.torch.calibrate import gradients

    model, ids, mask = tiny_llama_and_texts(transformers)
    data = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    cfg = cuttree.Config(ratio=0.5, criterion="taylor", min_samples=4, latency_runs=0)
    got = gradients(model, data, cfg)

    want = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for b in data:
        model.zero_grad()
        logits = model(**b).logits[:, :-1]
        target = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
        nn.functional.cross_entropy(logits.reshape(-1, 100), target.reshape(-1), ignore_index=-100).backward()
        for k, p in model.named_parameters():
            want[k] += p.grad
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    # labels given in the batch are used as they are
    labelled = [dict(b, labels=b["input_ids"]) for b in data]
    assert not torch.allclose(gradients(model, labelled, cfg)["lm_head.weight"], got["lm_head.weight"])

    r = cuttree.prune(model, (ids[:1],), cfg, calib_data=data)
    assert {g.criterion for g in r.plan} == {"taylor"} and r.after.params < r.before.params
    with torch.no_grad():
        assert r.model.generate(ids[:1], max_new_tokens=4, do_sample=False).shape == (1, 14)


def test_attention_whose_head_counts_cannot_be_patched_keeps_its_heads_whole() -> None:
    """DeepSeek-V4's attention has a head width but its queries come from low-rank ``q_a_proj`` /
    ``q_b_proj``, names the Hugging Face rule does not know: its heads stay whole, with a warning
    naming it, and the rest of the model prunes exactly (before, surgery failed on it)."""
    from cuttree.frontends.torch.validate import zeroed

    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DeepseekV4Config"):
        pytest.skip("this transformers has no DeepSeek-V4")
    cfg = transformers.DeepseekV4Config(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, q_lora_rank=64, o_lora_rank=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 100, (1, 8))
    with pytest.warns(UserWarning, match=r"kept the attention heads of 2 module\(s\) whole \(DeepseekV4Attention"):
        r = cuttree.prune(model, (ids,), cuttree.Config(ratio=0.3, latency_runs=0))
    assert not [g for g in r.plan.groups if g.unit == "heads"] and r.after.params < r.before.params
    with torch.no_grad():
        torch.testing.assert_close(r.model(ids).logits, zeroed(model, r.plan)(ids).logits, rtol=1e-5, atol=1e-6)
