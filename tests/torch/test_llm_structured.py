"""Structured pruning of language models: channel and head scores from the inputs of the layers
that read them (``wanda``, ``flap``), checked against scores computed here by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tests.torch.test_attention import tiny_llama
from torch import nn

import cuttree


def _inputs_of(model: nn.Module, names: list[str], data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every input row each named layer saw over ``data``, float64 (tokens × features)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = [
        mods[n].register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].reshape(-1, i[0].shape[-1]).double()))
        for n in names
    ]
    with torch.no_grad():
        for x in data:
            model(x)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _oracle(w: torch.Tensor, x: torch.Tensor, criterion: str) -> np.ndarray:
    """Per input column of ``w``: Σ_i |w_ij|·‖x_j‖₂ (wanda) or Σ_i w_ij²·var(x_j) (flap)."""
    w = w.detach().double()
    if criterion == "wanda":
        return (w.abs().sum(0) * x.norm(dim=0)).numpy()
    return (w.pow(2).sum(0) * x.var(dim=0, unbiased=False)).numpy()


def _top(scores: np.ndarray, keep: int) -> tuple[int, ...]:
    return tuple(sorted(np.argsort(-scores)[:keep].tolist()))


@pytest.mark.parametrize("criterion", ["wanda", "flap"])
def test_mlp_channels_and_heads_are_scored_by_the_layers_reading_them(criterion: str) -> None:
    """Oracle: hooks on ``down_proj`` and ``o_proj`` of a tiny LLaMA (8 query heads on 2 kv heads,
    head_dim 8, MLP 96) collect their inputs over the calibration batches; an MLP channel scores
    its ``down_proj`` column, a kv head the 32 ``o_proj`` columns of its 4 query heads, a query
    head position p the columns of heads 4k + p of both kv heads k. head_ratio 0.6 of the 2 × 4
    heads keeps one kv head and 3 query heads of each (3.2 of 8). The plan keeps the top."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tiny_llama(transformers)
    data = [torch.randint(0, 100, (2, 12)) for _ in range(4)]
    cfg = cuttree.Config(ratio=0.5, head_ratio=0.6, criterion=criterion, min_samples=8, calib_samples=8, latency_runs=0)
    plan, _ = cuttree.make_plan(model, (data[0][:1],), cfg, calib_data=data)
    groups = {g.name: g for g in plan}
    names = [f"model.layers.{i}.{p}" for i in range(2) for p in ("mlp.down_proj", "self_attn.o_proj")]
    xs = _inputs_of(model, names, data)
    for i in range(2):
        mlp = groups[f"model.layers.{i}.mlp.gate_proj"]
        down = f"model.layers.{i}.mlp.down_proj"
        s = _oracle(dict(model.named_modules())[down].weight, xs[down], criterion)
        assert (mlp.criterion, mlp.keep) == (criterion, _top(s, 48))
        o = f"model.layers.{i}.self_attn.o_proj"
        per_col = _oracle(dict(model.named_modules())[o].weight, xs[o], criterion).reshape(2, 4, 8)
        kv = groups[f"model.layers.{i}.self_attn.q_proj"]
        assert kv.keep == _top(per_col.sum((1, 2)), 1)
        q = groups[f"model.layers.{i}.self_attn.q_proj:query_heads"]
        assert q.keep == _top(per_col.sum((0, 2)), 3)  # 0.6 of 2 × 4 heads keeps 1 × 3


def test_obs_scores_from_the_inputs_of_the_layers_reading_the_channels() -> None:
    """Plumbing of ``obs`` (its arithmetic is checked against a brute force in
    tests/core/test_structured_obs.py): the Hessian of ``down_proj``'s and ``o_proj``'s inputs
    from hooks, mean xxᵀ over every token; an MLP channel owns its column, a kv head the columns
    of its 4 query heads, query head position p the columns of heads 4k + p. The plan keeps the
    channels the greedy removes last."""
    transformers = pytest.importorskip("transformers")
    from cuttree.core.obs import channel_removal_scores

    torch.manual_seed(0)
    model = tiny_llama(transformers)
    data = [torch.randint(0, 100, (2, 12)) for _ in range(4)]
    cfg = cuttree.Config(ratio=0.5, head_ratio=0.6, criterion="obs", min_samples=8, calib_samples=8, latency_runs=0)
    plan, _ = cuttree.make_plan(model, (data[0][:1],), cfg, calib_data=data)
    groups = {g.name: g for g in plan}
    mods = dict(model.named_modules())
    names = [f"model.layers.{i}.{p}" for i in range(2) for p in ("mlp.down_proj", "self_attn.o_proj")]
    xs = _inputs_of(model, names, data)

    def scores(layer: str, owner: np.ndarray, size: int) -> np.ndarray:
        h = (xs[layer].T @ xs[layer] / len(xs[layer])).numpy()
        return channel_removal_scores([(mods[layer].weight.detach().numpy(), h, owner)], size)

    for i in range(2):
        mlp = groups[f"model.layers.{i}.mlp.gate_proj"]
        assert (mlp.criterion, mlp.keep) == (
            "obs",
            _top(scores(f"model.layers.{i}.mlp.down_proj", np.arange(96), 96), 48),
        )
        o = f"model.layers.{i}.self_attn.o_proj"
        kv_owner, query_owner = np.repeat(np.arange(2), 32), np.tile(np.repeat(np.arange(4), 8), 2)
        assert groups[f"model.layers.{i}.self_attn.q_proj"].keep == _top(scores(o, kv_owner, 2), 1)
        query = groups[f"model.layers.{i}.self_attn.q_proj:query_heads"]
        assert query.keep == _top(scores(o, query_owner, 4), 3)


def test_obs_leaves_out_a_reader_too_wide_for_its_hessian_and_says_so() -> None:
    """A reader of over 8192 inputs (a classifier over flattened maps, say) would need a Hessian
    of 512 MiB or more: it is left out with a warning, and its channels fall back to ``l1``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8200), nn.ReLU(), nn.Linear(8200, 2))
    data = [torch.randn(4, 3) for _ in range(2)]
    cfg = cuttree.Config(ratio=0.5, criterion="obs", min_samples=8, latency_runs=0)
    with pytest.warns(UserWarning, match=r"leaves out 1 layer\(s\) with over 8192 inputs \(2\)"):
        plan, _ = cuttree.make_plan(net, (data[0],), cfg, calib_data=data)
    assert [g.criterion for g in plan] == ["l1"]


def test_keras_refuses_reader_criteria_with_the_fix() -> None:
    keras = pytest.importorskip("keras")
    import cuttree.keras as ck

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="criterion 'flap' scores channels of torch models only"):
        ck.prune(model, cuttree.Config(ratio=0.5, criterion="flap", min_samples=1), calib_data=_data())


def _data() -> Any:
    return [(np.ones((4, 8), dtype="float32"), np.zeros(4, dtype="int64"))]


def test_uniform_gives_every_layer_the_global_rankings_mean_width_and_saves_pretrained(tmp_path: Any) -> None:
    """``scope: global`` alone gives the two layers' MLPs different widths (a config cannot
    describe them: ``save_pretrained`` refuses); with ``uniform: true`` each keeps the mean of
    those widths, its own best channels, and the folder loads with plain ``from_pretrained``."""
    transformers = pytest.importorskip("transformers")
    from cuttree.files.huggingface import save_pretrained

    torch.manual_seed(0)
    model = tiny_llama(transformers)
    data = [torch.randint(0, 100, (2, 12)) for _ in range(4)]
    common = {"ratio": 0.4, "scope": "global", "criterion": "wanda", "round_to": 1, "min_samples": 8,
              "calib_samples": 8, "latency_runs": 0, "ignore": ["model.embed_tokens"]}  # fmt: skip
    ranked = cuttree.prune(model, (data[0][:1],), cuttree.Config(**common), calib_data=data)
    widths = [len(g.keep) for g in ranked.plan if g.name.endswith("mlp.gate_proj")]
    assert widths[0] != widths[1]
    with pytest.raises(cuttree.FileFormatError, match=r"keep different MLP widths \(\[37, 74\]\)"):
        save_pretrained(ranked.model, tmp_path / "ranked", (data[0][:1],))
    r = cuttree.prune(model, (data[0][:1],), cuttree.Config(**common, uniform=True), calib_data=data)
    mlp = [g for g in r.plan if g.name.endswith("mlp.gate_proj")]
    n = int(np.floor(sum(widths) / 2 + 0.5))
    assert [len(g.keep) for g in mlp] == [n, n]
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    xs = _inputs_of(model, names, data)
    for g, down in zip(mlp, names, strict=True):  # each keeps its own best, by the wanda oracle
        assert g.keep == _top(_oracle(model.get_submodule(down).weight, xs[down], "wanda"), n)
    folder = save_pretrained(r.model, tmp_path / "uniform", (data[0][:1],))
    back = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    assert back.config.intermediate_size == n
    with torch.no_grad():
        torch.testing.assert_close(back(data[1]).logits, r.model(data[1]).logits)


def test_uniform_and_sensitivity_allocation_are_refused_together() -> None:
    with pytest.raises(ValueError, match="uniform: true gives every layer one width, which allocation: sensitivity"):
        cuttree.Config(macs_target=0.5, uniform=True, allocation="sensitivity")
