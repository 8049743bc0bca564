"""Depth: whole decoder layers of a language model as a unit (``units: [layers]``), checked against
a hand-computed block influence and the original model with the removed layers skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.torch.test_attention import reload_without_cuttree
from torch import nn

import cuttree


def llama_stack(transformers: Any, layers: int = 6) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()  # type: ignore[no-any-return]


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 100, (2, 12), generator=g) for _ in range(4)]


def _influence(model: nn.Module, data: list[torch.Tensor]) -> np.ndarray:
    """Oracle: 1 - cos(input, output) of every decoder layer over every calibration token."""
    ins: dict[int, list[torch.Tensor]] = {}
    outs: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, k, i=i: ins.setdefault(i, []).append(a[0] if a else k["hidden_states"]), with_kwargs=True))  # fmt: skip
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(o)))
    with torch.no_grad():
        for x in data:
            model(x)
    for h in hooks:
        h.remove()
    out = []
    for i in range(len(model.model.layers)):
        a, b = torch.cat(ins[i]).double().reshape(-1, 32), torch.cat(outs[i]).double().reshape(-1, 32)
        out.append(float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()))
    return np.array(out)


def _skipping(model: nn.Module, removed: list[int]) -> list[Any]:
    """Hooks that make the ``removed`` decoder layers pass their hidden states through unchanged."""
    return [
        model.model.layers[i].register_forward_hook(
            lambda m, a, k, o: a[0] if a else k["hidden_states"], with_kwargs=True
        )
        for i in removed
    ]


@pytest.mark.parametrize(("ratio", "kept"), [(0.5, 3), (0.4, 4), (0.25, 5)])
def test_the_least_influential_layers_go_and_the_rest_compute_what_they_did(ratio: float, kept: int) -> None:
    """Oracle: block influence computed here by hooks; the plan keeps the ``kept`` most influential
    of 6 layers (the removed count rounded to the nearest, a half kept: 2.4 → 2, 1.5 → 1); the
    pruned model's logits equal the original's with the removed layers skipped, and greedy
    generation (which reads the key/value cache by ``layer_idx``) gives the same tokens."""
    transformers = pytest.importorskip("transformers")
    model, data = llama_stack(transformers), _data()
    cfg = cuttree.Config(ratio=ratio, units=["layers"], min_samples=8, calib_samples=8, latency_runs=0)
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    [g] = [g for g in r.plan if g.unit == "layers"]
    bi = _influence(model, data)
    want = tuple(sorted(np.argsort(-bi)[:kept].tolist()))
    assert (g.name, g.criterion, g.keep) == ("model.layers", "block_influence", want)
    assert all(len(h.keep) == h.size for h in r.plan if h.unit != "layers")  # units: [layers] alone
    removed = sorted(set(range(6)) - set(want))
    assert r.model.config.num_hidden_layers == kept == len(r.model.model.layers)
    assert [layer.self_attn.layer_idx for layer in r.model.model.layers] == list(range(kept))
    hooks = _skipping(model, removed)
    with torch.no_grad():
        torch.testing.assert_close(r.model(data[1]).logits, model(data[1]).logits, rtol=1e-5, atol=1e-5)
        ids = data[2][:1, :5]
        same = r.model.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(same, model.generate(ids, max_new_tokens=6, do_sample=False))
    for h in hooks:
        h.remove()
    assert r.plan.macs_after == r.after.macs and r.after.params < r.before.params


def test_params_target_counts_whole_layers_and_depth_and_width_go_together() -> None:
    """The parameter estimate of a depth plan equals the pruned model's count (a layer's every
    parameter goes with it); with ``units: [channels, layers]`` both are cut at the searched ratio."""
    transformers = pytest.importorskip("transformers")
    model, data = llama_stack(transformers), _data()
    for units in (["layers"], ["channels", "layers"]):
        cfg = cuttree.Config(
            params_target=0.8,
            units=units,
            criterion="wanda",
            min_samples=8,
            calib_samples=8,
            latency_runs=0,
            ignore=["model.embed_tokens"],  # the hidden width stays (tests/torch/test_llm_hidden.py)
        )
        r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
        depth = next(g for g in r.plan if g.unit == "layers")
        mlp = [g for g in r.plan if g.name.endswith("mlp.gate_proj") and g.name.split(".")[2] in map(str, depth.keep)]
        assert r.after.params <= 0.8 * r.before.params and r.plan.macs_after == r.after.macs
        assert len(depth.keep) < 6
        assert all(len(g.keep) < g.size for g in mlp) == (units != ["layers"])


def test_depth_needs_calibration_data_and_a_stack_of_layers() -> None:
    transformers = pytest.importorskip("transformers")
    model, data = llama_stack(transformers), _data()
    cfg = cuttree.Config(ratio=0.5, units=["layers"], latency_runs=0)
    with pytest.raises(
        cuttree.PlanError, match=r"units: layers scores the blocks of 'model\.layers' by their influence"
    ):
        cuttree.prune(model, (data[0][:1],), cfg)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="units: layers removes whole decoder layers, and this model has no stack"):
        r = cuttree.prune(mlp, (torch.randn(2, 4),), cuttree.Config(ratio=0.5, units=["layers", "channels"]))
    assert r.model[0].out_features == 4
    with pytest.raises(ValueError, match=r"units with layers .* set scope: local"):
        cuttree.Config(ratio=0.5, units=["layers"], scope="global")


def test_a_depth_pruned_model_saves_and_loads_without_cuttree(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from cuttree.files.huggingface import save_pretrained

    model, data = llama_stack(transformers), _data()
    cfg = cuttree.Config(ratio=0.5, units=["layers"], min_samples=8, calib_samples=8, latency_runs=0)
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    folder = save_pretrained(r.model, tmp_path / "shallow", (data[0][:1],))
    done = reload_without_cuttree(r.model, folder, data[1], tmp_path, "c.num_hidden_layers, len(m.model.layers)")
    assert done == ["3", "3", "True"]


def test_a_depth_and_width_pruned_model_reloads_from_a_cuttree_file_exactly(tmp_path: Path) -> None:
    """Non-uniform widths and fewer layers: the ``.cuttree`` file names the dense architecture
    (``cuttree.models:causal_lm`` with the dense config), whose plan removes the same layers again."""
    transformers = pytest.importorskip("transformers")
    model, data = llama_stack(transformers), _data()
    dense_config = model.config.to_dict()
    cfg = cuttree.Config(
        ratio=0.5, criterion="wanda", units=["channels", "layers"], min_samples=8, calib_samples=8, latency_runs=0
    )
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    cuttree.save(
        r.model,
        tmp_path / "lm.cuttree",
        arch="cuttree.models:causal_lm",
        arch_kwargs={"config": dense_config},
        plan=r.plan,
    )
    back = cuttree.load(tmp_path / "lm.cuttree")
    assert back.config.num_hidden_layers == 3 and len(back.model.layers) == 3
    with torch.no_grad():
        assert torch.equal(back(data[1]).logits, r.model(data[1]).logits)


def test_a_plan_that_keeps_every_layer_prunes_the_width_alone() -> None:
    """``units: [channels, layers]`` at a ratio that rounds to no layer (0.05 × 6 = 0.3): the stack
    stays whole and the MLPs still lose their 3 weakest of 64 channels (surgery once failed on it)."""
    transformers = pytest.importorskip("transformers")
    model, data = llama_stack(transformers), _data()
    cfg = cuttree.Config(
        ratio=0.05, units=["channels", "layers"], criterion="wanda", round_to=1, min_samples=8, calib_samples=8,
        latency_runs=0,
    )  # fmt: skip
    r = cuttree.prune(model, (data[0][:1],), cfg, calib_data=data)
    assert r.model.config.num_hidden_layers == len(r.model.model.layers) == 6
    assert [layer.mlp.gate_proj.out_features for layer in r.model.model.layers] == [61] * 6
