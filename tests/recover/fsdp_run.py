"""Fine-tune a tiny LLaMA on text with distillation, for the test of several processes
(``tests/recover/test_fsdp.py``): run alone, or under ``torchrun`` with ``finetune.parallel``
``ddp`` or ``fsdp``; prints one JSON line (the loss of every step, the final weights' digest).

    python tests/recover/fsdp_run.py RUN_DIR PARALLEL BATCH [MAX_STEPS] [--resume] [--keep-best]
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import cuttree
from cuttree.recover.devices import init_distributed
from cuttree.recover.sharding import gathered
from cuttree.recover.train import finetune, weights_digest


def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(cfg)


def main() -> None:
    run, parallel, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    max_steps = int(sys.argv[4]) if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else None
    init_distributed("cpu")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    texts = [{"input_ids": torch.randint(0, 64, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.long)} for _ in range(48)]  # fmt: skip
    model, teacher = tiny(), tiny().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))  # a teacher that differs: distillation pulls
    ft = {"batch_size": batch, "epochs": 1, "optimizer": "adamw", "lr": 0.003, "distill": 0.5, "temperature": 2.0,
          "checkpoint_every": 1, "parallel": parallel, "keep_best": "--keep-best" in sys.argv}  # fmt: skip
    cfg = cuttree.Config(ratio=0.5, finetune=ft)
    state = finetune(
        model, texts[:40], cfg, teacher=teacher, run_dir=run, resume="--resume" in sys.argv, log=lambda m: None,
        max_steps=max_steps, val_data=texts[40:],
    )  # fmt: skip
    plain = gathered(model, lambda: copy.deepcopy(tiny()))
    digest = weights_digest(plain)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        losses = [h["loss"] for h in state["history"]]
        print(
            json.dumps(
                {"step": state["step"], "losses": losses, "digest": digest, "kept": state["validation"].get("kept")}
            )
        )


if __name__ == "__main__":
    main()
