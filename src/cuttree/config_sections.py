"""The sections of the configuration (:class:`cuttree.config.Config`): ``finetune:``,
``schedule:``, ``latency_target:``, ``owl:`` and the per-layer overrides under ``layers:``.
Unknown keys and out-of-range values fail as the whole config's do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ScheduleConfig(BaseModel):
    """Gradual sparsity (``schedule:``), the vocabulary of the TF Model Optimization Toolkit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    final_sparsity: float = Field(default=0.8, ge=0.0, lt=1.0)
    begin_step: int = Field(default=0, ge=0)
    end_step: int = Field(default=1000, gt=0)
    frequency: int = Field(default=100, gt=0)
    power: float = Field(default=3.0, gt=0.0)

    @model_validator(mode="after")
    def _order(self) -> ScheduleConfig:
        if self.end_step <= self.begin_step:
            raise ValueError(f"schedule.end_step={self.end_step} must be after begin_step={self.begin_step}")
        return self


class LayerOverride(BaseModel):
    """Settings for the groups of the layers a name or glob matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float | None = Field(default=None, ge=0.0, lt=1.0)
    min_channels: int | None = Field(default=None, ge=1)


class LatencyTarget(BaseModel):
    """A latency budget measured on the machine cuttree runs on: at most ``ms`` milliseconds per
    forward pass at batch ``batch`` (eager torch, or ONNX Runtime with ``runtime: onnxruntime``),
    or at most ``fraction`` of the dense model's latency timed in the same loop (what stays true
    on a machine whose speed drifts: both models slow down together).

    >>> LatencyTarget(fraction=0.6, batch=32).fraction
    0.6
    >>> from cuttree.config import Config
    >>> Config(latency_target={"batch": 32})
    Traceback (most recent call last):
    ...
    ValueError: config key 'latency_target' = {'batch': 32}: latency_target needs ms (milliseconds) or fraction (of the dense latency, e.g. 0.6); set one of them; fix the value in the config or --set latency_target=...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ms: float | None = Field(default=None, gt=0.0)
    fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    batch: int = Field(default=1, gt=0)
    runtime: Literal["eager", "onnxruntime"] = "eager"
    tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)  #: how far below the budget is close enough

    @model_validator(mode="after")
    def _one_budget(self) -> LatencyTarget:
        if (self.ms is None) == (self.fraction is None):
            fix = "set one of them" if self.ms is None else "got both: keep one"
            raise ValueError(
                f"latency_target needs ms (milliseconds) or fraction (of the dense latency, e.g. 0.6); {fix}"
            )
        return self


class OwlConfig(BaseModel):
    """OWL's per-layer sparsity (``allocation: owl``; Yin et al., 2023): a decoder layer's
    outlier ratio is the share of its Wanda scores |w|·‖x‖ above ``m`` times their mean, on the
    dense model; the layer with the most outliers is pruned to ``ratio - spread``, the one with
    the fewest to ``ratio + spread``, linearly between, and the mean over the layers is ``ratio``.
    The paper's defaults: ``m: 5``, ``spread: 0.08``.

    >>> OwlConfig().m, OwlConfig(spread=0.1).spread
    (5.0, 0.1)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    m: float = Field(default=5.0, gt=0.0)
    spread: float = Field(default=0.08, ge=0.0, lt=0.5)


DEFAULT_LR = {"sgd": 0.01, "adamw": 0.001}  #: ``finetune.lr`` when the config leaves it out


class FinetuneConfig(BaseModel):
    """How to recover accuracy after pruning (``finetune:`` in the YAML).

    ``amp``: ``auto`` (bfloat16 on a GPU that has it, float16 with a gradient scaler on one that
    does not, full precision on the CPU), ``off``, ``bf16`` or ``fp16`` (always with a scaler).
    ``deterministic``: reproducible kernels, so that a resumed run on a GPU ends with the same
    weights as an uninterrupted one (slower; CPU runs are reproducible without it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float = Field(default=1.0, gt=0.0)
    batch_size: int = Field(default=64, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    #: the peak learning rate; by default the optimizer's (:data:`DEFAULT_LR`: 0.01 for SGD with
    #: momentum, 0.001 for AdamW), so that switching optimizer never keeps a rate meant for the other
    lr: float = Field(default=0.01, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_epochs: float = Field(default=1.0, gt=0.0)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0)
    distill: float = Field(default=0.0, ge=0.0, le=1.0)
    temperature: float = Field(default=4.0, gt=0.0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    deterministic: bool = False
    #: several processes under ``torchrun``: ``ddp`` (a whole copy of the model in each) or
    #: ``fsdp`` (FSDP2's ``fully_shard``: each process holds a shard of every parameter, for models
    #: that do not fit one device; each decoder layer is sharded apart, then the rest)
    parallel: Literal["ddp", "fsdp"] = "ddp"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="before")
    @classmethod
    def _lr_of_the_optimizer(cls, data: Any) -> Any:
        """``lr`` left out: the default of the optimizer chosen.

        >>> FinetuneConfig(optimizer="adamw").lr, FinetuneConfig().lr, FinetuneConfig(optimizer="adamw", lr=0.1).lr
        (0.001, 0.01, 0.1)
        """
        if isinstance(data, dict) and "lr" not in data:
            return {**data, "lr": DEFAULT_LR.get(str(data.get("optimizer", "sgd")), DEFAULT_LR["sgd"])}
        return data

    checkpoint_every: int = Field(default=100, ge=0)
    ignore_index: int = 255
    bn_recalibrate: bool = True
    #: the share of the training data held out to validate on when no validation data is given
    #: (0: no validation, the last weights are kept)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    #: end with the weights that scored best on validation, those from before fine-tuning included
    keep_best: bool = True
