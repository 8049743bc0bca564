"""Causal language models rebuilt from their Hugging Face config, for ``cuttree.load``.

A ``.cuttree`` file of a language model names ``cuttree.models:causal_lm`` with the model's
config (``model.config.to_dict()``) as its arguments; loading builds the architecture with random
weights from that config alone (no download, no custom code) and then loads the file's weights.

>>> lm = causal_lm({"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
...                 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
>>> type(lm).__name__, lm.training
('LlamaForCausalLM', False)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def causal_lm(config: dict[str, Any]) -> nn.Module:
    """The causal LM that ``config`` (a Hugging Face config as a dict, with its ``model_type``)
    describes, float32, random weights, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if "model_type" not in config:
        raise ValueError(
            "a causal LM's config needs its model_type (model.config.to_dict() has it); pass the whole dict"
        )
    rest = {k: v for k, v in config.items() if k != "model_type"}
    return AutoModelForCausalLM.from_config(
        AutoConfig.for_model(config["model_type"], **rest), dtype=torch.float32
    ).eval()
