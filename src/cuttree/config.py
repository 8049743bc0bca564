"""One typed configuration for the Python API and the CLI.

Unknown keys and out-of-range values fail when the config is made or loaded, with a one-line
message that names the key, the rule and the fix.

>>> Config(mode="classification", threshold=0.5, min_samples=2, ratio=0.5).ratio
0.5
>>> Config(ratio=0.3, thresold=0.1)
Traceback (most recent call last):
...
ValueError: config key 'thresold': unknown key — did you mean 'threshold'?
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cuttree.config_sections import FinetuneConfig, LatencyTarget, LayerOverride, OwlConfig, ScheduleConfig
from cuttree.core.importance import REGISTRY
from cuttree.errors import did_you_mean

# Snapshots of the built-in criteria (old names); Config itself validates against the live registry.
DATA_CRITERIA = tuple(n for n, c in REGISTRY.items() if c.data_driven)
UNSTRUCTURED_CRITERIA = tuple(n for n, c in REGISTRY.items() if c.unstructured)


class Config(BaseModel):
    """What to prune and how.

    - ``mode``: ``classification`` or ``segmentation``; what the model's outputs are (class
      logits, per-pixel class maps). Outputs never lose channels in either mode; the mode also
      picks the default metric and fine-tuning loss.
    - ``threshold``: prune what scores below this fraction of its group's strongest score.
    - ``min_samples``: the fewest calibration samples a data-driven criterion may use.
    - ``ratio``: the fraction of each group's channels to remove (``scope: global`` ranks all
      groups together). With ``threshold`` too, a channel goes only if both select it.
    - ``macs_target``: the fraction of the original MACs to keep, at most (e.g. 0.5 halves them;
      with ``allocation: uniform`` the ratio is searched, then groups are widened one rounding
      step each while the budget holds, so rounded widths land close to it);
      ``params_target`` the same for parameters; ``latency_target`` (``{ms: X, batch: B}`` or
      ``{fraction: F, batch: B}``) a measured latency on this machine (:class:`LatencyTarget`).
    - ``allocation``: how a budget is split among groups: ``uniform`` (by ``scope``: the same
      ratio everywhere, or all channels ranked together) or ``sensitivity`` (per-group ratios
      that meet the budget with the least loss predicted by a sensitivity analysis), or for
      one-shot sparsity of a language model ``owl``: each decoder layer's sparsity from its
      share of outlier scores (:class:`OwlConfig`, the ``owl:`` section), the mean kept at ``ratio``.
    - ``head_ratio``: the fraction of attention heads to remove (default: ``ratio``); 0 keeps
      every head. Per-layer overrides in ``layers`` still win.
    - ``group_width``: a grouped convolution loses whole groups *and* the same positions of the
      width inside every group (two units, each pruned at the group's ratio; named
      ``<layer>:width`` in the plan); grouped-query attention likewise loses key/value heads with
      their query heads *and* the same query heads of every kv head (``<q projection>:query_heads``,
      unit ``query heads``, pruned at ``head_ratio``). ``false`` keeps the width inside groups and
      the query heads of each kv head (both frontends).
    - ``units``: what a budget may remove: ``channels``, ``heads``, ``query heads``, ``groups``,
      ``width`` (what the trace finds) and ``layers``: whole blocks of a language model's stack of
      decoder layers (depth), scored by their block influence on the calibration data (ShortGPT's
      1 − cos(input, output)) and rounded to the nearest whole layer. The default, every unit but
      ``layers``, prunes width only; ``[layers]`` prunes depth only, and listing both prunes both
      at the budget's ratio. Groups of other units keep everything (PyTorch only for ``layers``).
    - ``uniform``: the same kept count in every layer of one type (the groups whose names differ
      only in layer indices, such as every ``model.layers.N.mlp.gate_proj``): the mean of what the
      budget gives them, each keeping its best; under ``scope: global`` the global ranking's mean.
      What a Hugging Face config can describe, so that ``save_pretrained`` always works. A budget of
      MACs or parameters is searched among uniform plans.
    - ``round_to``: kept channel counts are rounded up to a multiple of this. ``auto`` (the
      default) rounds channel groups of at least 64 channels to the channel block of the
      deployment ``target`` (:func:`cuttree.core.planner.channel_block`), the widths where ONNX
      Runtime's and oneDNN's blocked convolutions and GPU tensor cores take their fast path, and
      leaves smaller groups, attention heads and conv groups free. ``1`` leaves every width free.
    - ``target``: the hardware the pruned model is meant for, which fixes the block of ``round_to:
      auto``: ``generic`` (the default), ``avx2`` and ``cuda`` round to 8, ``avx512`` to 16. Only
      ``this-machine`` reads the CPU that plans (16 with AVX-512, else 8), so every other value
      gives the same plan on every machine; the plan records the target.
    - ``steps``: reach the target in this many prune → fine-tune rounds.
    - ``reconstruct``: after surgery, refit every layer that lost input channels by least squares
      so it reproduces the original's outputs on the calibration data (needs calibration data;
      BN recalibration is then skipped, since it would undo the fit); a language model's decoder
      layers one by one, against the original layers on the pruned stream
      (:mod:`cuttree.recover.reconstruct_stack`).
    - ``fold_computed_weights``: replace every Conv/Linear that computes its weight in ``forward``
      (weight standardization as in BiT, weight norm) with a plain one holding that weight before
      tracing (:mod:`cuttree.frontends.torch.fold`): exact, and their channels can then be pruned; fine-tuning
      then trains plain layers. Off by default, such layers' channels are kept whole (PyTorch only).
    - ``finetune``: the recovery settings (:class:`FinetuneConfig`).
    - ``method: unstructured`` zeroes single weights instead (``ratio`` is then the sparsity; ``nm``
      such as ``2:4`` keeps N of every M consecutive input weights); criteria ``l1``/``l2``
      (magnitude), ``wanda`` (|w|·‖x‖) and ``sparsegpt`` (the OBS update, :mod:`cuttree.core.obs`).
      ``scope: row`` compares each output row's weights (Wanda's comparison group). Equal scores
      are ordered pseudo-randomly from ``seed`` (:func:`cuttree.core.masks.tie_order`), or with
      ``ties: position`` the earlier position first (the reference implementations' stable sort).
    - ``sequential``: calibrate a language model decoder layer by decoder layer, each on the
      outputs of the layers already pruned (the papers' procedure, holding one layer's
      activations at a time). ``None`` (the default) does so wherever the model has a stack of
      decoder layers and the criterion reads data (``wanda``, ``sparsegpt``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["classification", "segmentation"] = "classification"
    threshold: float | None = Field(default=None, ge=0.0, lt=1.0)
    min_samples: int = Field(default=8, gt=0)
    ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    macs_target: float | None = Field(default=None, gt=0.0, le=1.0)
    params_target: float | None = Field(default=None, gt=0.0, le=1.0)
    latency_target: LatencyTarget | None = None
    allocation: Literal["uniform", "sensitivity", "owl"] = "uniform"
    owl: OwlConfig = Field(default_factory=OwlConfig)
    head_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    group_width: bool = True
    units: tuple[Literal["channels", "heads", "query heads", "groups", "width", "layers"], ...] | None = None
    uniform: bool = False
    criterion: str = "l1"
    scope: Literal["local", "global", "row"] = "local"
    min_channels: int = Field(default=1, ge=1)
    round_to: int | Literal["auto"] = "auto"
    target: Literal["generic", "avx2", "avx512", "cuda", "this-machine"] = "generic"
    ignore: tuple[str, ...] = ()
    layers: dict[str, LayerOverride] = Field(default_factory=dict)
    calib_samples: int = Field(default=256, gt=0)
    seed: int = 0
    latency_runs: int = Field(default=10, ge=0)
    steps: int = Field(default=1, ge=1)
    reconstruct: bool = False
    fold_computed_weights: bool = False
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    method: Literal["structured", "unstructured"] = "structured"
    nm: str | None = Field(default=None, pattern=r"^[1-9][0-9]*:[1-9][0-9]*$")
    schedule: ScheduleConfig | None = None
    sequential: bool | None = None
    ties: Literal["seeded", "position"] = "seeded"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ValueError(_one_line(e, type(self))) from None

    @field_validator("criterion")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(
                f"unknown criterion{did_you_mean(v, REGISTRY)}; registered: {', '.join(REGISTRY)} "
                "(add your own with @cuttree.criterion)"
            )
        return v

    @model_validator(mode="after")
    def _one_target(self) -> Config:
        info = REGISTRY[self.criterion]
        if self.method == "unstructured":
            if not info.unstructured:
                takes = ", ".join(n for n, c in REGISTRY.items() if c.unstructured)
                raise ValueError(f"criterion '{self.criterion}' is for channels; unstructured pruning takes {takes}")
            if self.macs_target is not None:
                raise ValueError("macs_target needs structured pruning; zeroed weights do not remove MACs on a CPU")
            if self.sequential and not info.data_driven:
                raise ValueError(
                    f"sequential: true calibrates layer by layer, but criterion '{self.criterion}' reads no data; "
                    "drop sequential or use criterion wanda or sparsegpt"
                )
            if self.allocation == "owl":
                self._owl(info.data_driven)
            if self.criterion == "sparsegpt" and self.threshold is not None:
                raise ValueError("criterion sparsegpt takes ratio or nm, not threshold; set ratio (e.g. 0.5) or nm")
            if self.nm is not None:
                n, m = (int(v) for v in self.nm.split(":"))
                if n >= m:
                    raise ValueError(f"nm '{self.nm}': N must be below M, e.g. 2:4")
                return self
            if self.schedule is not None and self.ratio is None and self.threshold is None:
                return self
        elif not info.structured or self.nm or self.schedule or self.sequential or self.allocation == "owl":
            what = f"criterion {self.criterion} is" if not info.structured else "nm, schedule, sequential and owl are"
            raise ValueError(f"{what} for method: unstructured; set method: unstructured")
        if self.uniform and self.allocation == "sensitivity":
            raise ValueError(
                "uniform: true gives every layer one width, which allocation: sensitivity makes differ; choose one"
            )
        if self.units is not None and not self.units:
            raise ValueError("units: [] leaves nothing to prune; list what may go, e.g. [channels, heads, layers]")
        if self.units is not None and "layers" in self.units and self.scope == "global":
            raise ValueError(
                "units with layers prunes whole layers at the budget's ratio, which scope: global (channels ranked "
                "across groups) has none of; set scope: local"
            )
        if self.units is not None and self.method != "structured":
            raise ValueError("units selects what structured pruning removes; drop units or set method: structured")
        if self.method == "structured" and self.scope == "row":
            raise ValueError(
                "scope: row compares the weights of each output row (method: unstructured); set scope: local"
            )
        if all(
            getattr(self, k) is None for k in ("ratio", "threshold", "macs_target", "params_target", "latency_target")
        ):
            raise ValueError(
                "no pruning target; set ratio (e.g. 0.5), threshold, macs_target, params_target or latency_target"
            )
        targets = [
            k for k in ("ratio", "macs_target", "params_target", "latency_target") if getattr(self, k) is not None
        ]
        if len(targets) > 1:
            raise ValueError(f"{' and '.join(targets)} are {len(targets)} budgets; set one of them")
        return self

    @property
    def tie_seed(self) -> int | None:
        """The seed that orders equal scores in a mask; ``None`` (by position) under ``ties: position``.

        >>> Config(ratio=0.5).tie_seed, Config(ratio=0.5, ties="position").tie_seed
        (0, None)
        """
        return None if self.ties == "position" else self.seed

    def _owl(self, data_driven: bool) -> None:
        if (
            not data_driven
            or self.ratio is None
            or self.nm
            or self.threshold
            or self.schedule
            or self.sequential is False
        ):
            raise ValueError(
                "allocation: owl spreads a one-shot sparsity ratio over a language model's decoder layers, layer by "
                "layer; use it with criterion wanda or sparsegpt and ratio (no nm, threshold, schedule or sequential: false)"
            )
        if not self.owl.spread <= min(self.ratio, 1.0 - self.ratio):
            raise ValueError(
                f"owl.spread={self.owl.spread} with ratio={self.ratio} would ask some layer for a sparsity outside "
                f"[0, 1]; set owl.spread to at most {min(self.ratio, 1.0 - self.ratio):g}"
            )

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be a whole number ≥ 1 (8 for fast kernels, 1 for free widths) or 'auto'")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
        """Load a YAML file (a mapping of the keys above), then apply ``overrides``."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file '{p}' does not exist; pass the path of a YAML file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ValueError(f"config file '{p}' is not valid YAML{where}; fix its syntax") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
        return cls(**merge(data, overrides or {}))

    @property
    def pruned_units(self) -> tuple[str, ...]:
        """The units a budget may remove (``units``, by default every unit but ``layers``).

        >>> Config(ratio=0.5).pruned_units[-1], Config(ratio=0.5, units=["layers"]).pruned_units
        ('width', ('layers',))
        """
        return self.units if self.units is not None else ("channels", "heads", "query heads", "groups", "width")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as plain data (what is written next to every output)."""
        return self.model_dump(mode="json")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["ratio=0.5", "finetune.epochs=2"]`` → nested dict (values are YAML; dots nest).

    >>> parse_set(["ratio=0.5", "criterion=l2", "finetune.epochs=2"])
    {'ratio': 0.5, 'criterion': 'l2', 'finetune': {'epochs': 2}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ratio=0.5")
        *parents, leaf = parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"--set {item!r}: key {key!r} has an empty part; write dotted keys as finetune.epochs=2")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} was set to a value before, so it cannot hold {leaf!r}")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(
                f"--set {item!r}: the value {value!r} is not valid YAML; quote it (a string: --set {_printable(key)}='\"...\"') "
                "or fix its brackets"
            ) from None
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The config class that holds the key at ``loc`` (``finetune.epoch`` → FinetuneConfig)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return model


def _one_line(e: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's first error as one line; keys that are not printable (a newline) are escaped.

    >>> try:
    ...     Config(ratio=0.5, **{"a\\nb": 1})
    ... except ValueError as e:
    ...     print(e)
    config key 'a\\nb': unknown key
    """
    err = e.errors()[0]
    loc = ".".join(_printable(str(x)) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"config key '{loc}': unknown key{did_you_mean(key, _section(model, err['loc'][:-1]).model_fields)}"
    msg = _printable(err["msg"].removeprefix("Value error, "))
    if not loc:
        return msg
    value = err.get("input")
    return f"config key '{loc}' = {value!r}: {msg}; fix the value in the config or --set {loc}=..."


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so that an error stays on one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
