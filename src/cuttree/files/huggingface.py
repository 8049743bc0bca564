"""Hugging Face output: a pruned ``transformers`` model as ``save_pretrained`` files that
``from_pretrained`` loads with no cuttree installed, where the model's config can say the new sizes.

That needs every layer to keep the same widths (a config has one ``num_attention_heads``, one
``intermediate_size``) and a model class that reads the head width from ``config.head_dim``
(LLaMA, Mistral, Qwen2, ViT in transformers 5, …; BERT derives it from ``hidden_size`` and so
cannot describe pruned heads). :func:`save_pretrained` writes the files, loads them back with
``from_pretrained`` and compares the outputs on a probe input; if anything differs, nothing is
left behind and the error says to save a ``.cuttree`` file instead.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cuttree.errors import FileFormatError
from cuttree.frontends.torch.plugins.transformers import hf_projections, linear_child


def _uniform(values: list[int], what: str) -> int | None:
    if not values:
        return None
    if len(set(values)) > 1:
        raise FileFormatError(
            f"the pruned layers keep different {what} ({sorted(set(values))}); a Hugging Face config holds one "
            "value, so save this model as .cuttree (cuttree.save) or prune with uniform: true"
        )
    return values[0]


def pruned_config(model: nn.Module) -> Any:
    """A copy of ``model.config`` with the head counts, head width, MLP width and hidden width the model now has."""
    config = copy.deepcopy(model.config)  # type: ignore[union-attr]
    heads, kv_heads, widths, mlp = [], [], [], []
    for m in model.modules():
        width, q, k = hf_projections(m)
        if width and q is not None and k is not None:
            heads.append(q.out_features // width)
            kv_heads.append(k.out_features // width)
            widths.append(width)
        up = linear_child(m, ("up_proj", "fc1"))
        if up is not None and hasattr(config, "intermediate_size"):
            mlp.append(up.out_features)
        elif type(m).__name__.endswith("Intermediate") and (dense := linear_child(m, ("dense",))) is not None:
            mlp.append(dense.out_features)
    values = {
        "num_attention_heads": _uniform(heads, "attention head counts"),
        "num_key_value_heads": _uniform(kv_heads, "key/value head counts")
        if hasattr(config, "num_key_value_heads")
        else None,
        "head_dim": _uniform(widths, "head widths"),
        "intermediate_size": _uniform(mlp, "MLP widths"),
        "hidden_size": _hidden_width(model) if hasattr(config, "hidden_size") else None,
    }
    for key, value in values.items():
        if value is not None:
            setattr(config, key, value)
    return config


def _hidden_width(model: nn.Module) -> int | None:
    """The width of the model's input embeddings (its hidden stream), where it has them."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return int(emb.weight.shape[1]) if isinstance(emb, nn.Embedding) else None


def save_pretrained(model: nn.Module, path: str | Path, probe: tuple[torch.Tensor, ...]) -> Path:
    """Write ``model`` with ``save_pretrained`` and check that ``from_pretrained`` rebuilds it exactly.

    ``probe`` is an input the check runs both models on (token ids, or pixel values). The folder
    is written whole or not at all.
    """
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"'{out}' exists; save_pretrained writes a new folder, pass a path that does not exist")
    work = copy.deepcopy(model)
    work.config = pruned_config(model)  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        work.save_pretrained(tmp)  # type: ignore[operator]
        try:
            again = type(model).from_pretrained(tmp).eval()  # type: ignore[attr-defined]
            with torch.no_grad():
                want, got = _first(model.eval()(*probe)), _first(again(*probe))
            same = want.shape == got.shape and torch.allclose(want, got, rtol=1e-4, atol=1e-5)
        except Exception as e:  # any failure to reload means the config cannot describe the model
            raise FileFormatError(
                f"{type(model).__name__}'s config cannot describe the pruned sizes (from_pretrained: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); save it as .cuttree with cuttree.save"
            ) from None
        if not same:
            raise FileFormatError(
                f"{type(model).__name__} reloaded from save_pretrained computes something else (its code derives a "
                "size the config cannot set); save it as .cuttree with cuttree.save"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _first(out: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        t = getattr(out, key, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(f"cannot compare outputs of type {type(out).__name__}")
