"""Weight-standardized models with ``fold_computed_weights``: timm's BiT ResNetV2, two NFNets and
a ViT on a BiT backbone (whose stem pads for "same" output at every call), and Hugging Face's BiT, ratio 0.3, L1, local, random weights, 64×64 inputs.

For each model: how many layers compute their weight, what the default config prunes (those
layers' input channels stay whole), what it prunes with the layers folded, and the largest
difference between the pruned model and the folded original with the removed channels zeroed
(the oracle, :func:`cuttree.frontends.torch.validate.zeroed`; 0 up to float rounding means the pruning is exact), for the default plan too.

    python bench/fold_zoo.py
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import cuttree
from cuttree.frontends.torch.fold import computes_its_weight, fold_computed_weights
from cuttree.frontends.torch.validate import zeroed

RATIO = 0.3
TIMM = ["resnetv2_50x1_bit", "nf_resnet26", "nf_regnet_b0", "vit_small_r26_s32_224"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "hf:bit":
        import transformers

        cfg = transformers.BitConfig(hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], num_labels=10)  # type: ignore[call-arg]
        return transformers.BitForImageClassification(cfg).eval()
    import timm

    size: dict[str, Any] = {"img_size": 64} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **size).eval()


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in tree_flatten(model(x))[0] if isinstance(t, torch.Tensor)]


def error(pruned: nn.Module, oracle: nn.Module, x: torch.Tensor) -> float:
    return max((a - b).abs().max().item() for a, b in zip(outputs(pruned, x), outputs(oracle, x), strict=True))


def main() -> None:
    print(f"ratio {RATIO}, l1, local, random weights, input 2×3×64×64; torch {torch.__version__}")
    print(
        "| model | computed-weight layers | params kept, default | params kept, folded | MACs kept, folded | largest error vs oracle, default / folded | engine s |"
    )
    print("|---|---|---|---|---|---|---|")
    x = torch.randn(2, 3, 64, 64)
    notes: list[str] = []
    for name in [*TIMM, "hf:bit"]:
        model = build(name)
        n = sum(computes_its_weight(m) for m in model.modules())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = cuttree.prune(model, (x,), cuttree.Config(ratio=RATIO, latency_runs=0))
            t0 = time.perf_counter()
            r = cuttree.prune(model, (x,), cuttree.Config(ratio=RATIO, latency_runs=0, fold_computed_weights=True))
            seconds = time.perf_counter() - t0
        folded, _ = fold_computed_weights(model, (x,))
        print(
            f"| {name} | {n} ({len(r.plan.folded)} folded) | {plain.after.params / plain.before.params:.1%} | "
            f"{r.after.params / r.before.params:.1%} ({r.after.params:,}) | {r.after.macs / r.before.macs:.1%} | "
            f"{error(plain.model, zeroed(model, plain.plan), x):.1e} / {error(r.model, zeroed(folded, r.plan), x):.1e} "
            f"| {seconds:.1f} |"
        )
        if name.startswith("vit"):
            cfg = cuttree.Config(ratio=RATIO, latency_runs=0, fold_computed_weights=True, ignore=("patch_embed.proj",))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kept = cuttree.prune(model, (x,), cfg)
            notes.append(
                f"{name}: its token stream passes through LayerNorms, whose statistics change when channels go, so "
                "zeroing is no oracle for it; with the stream kept whole (ignore: [patch_embed.proj]) the largest "
                f"error is {error(kept.model, zeroed(folded, kept.plan), x):.1e} "
                f"({kept.after.params / kept.before.params:.1%} of the parameters kept)"
            )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
