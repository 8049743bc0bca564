"""The pruning plan: what stays, as plain data, before any surgery.

A :class:`PruningPlan` lists, for every group, the channels it keeps and every tensor dim the
group lives in (with the positions each channel occupies there). It prints as a table, diffs,
and round-trips through ``to_dict``/``from_dict`` (JSON-safe), which is how ``.cuttree`` files
carry it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cuttree.errors import FileFormatError

PLAN_VERSION = 1


@dataclass(frozen=True, eq=False)
class Member:
    """One tensor dim of a group: ``positions[i]`` of ``tensor``'s ``dim`` belongs to the group's
    channel ``channels[i]``. The same type in the dependency graph and in a saved plan."""

    tensor: str
    dim: int
    positions: np.ndarray
    channels: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        n = len(self.positions)
        size = int(self.channels.max()) + 1 if n else 0
        rep = n // size if size and n % size == 0 else 0
        if (
            rep
            and np.array_equal(self.positions, self.positions[0] + np.arange(n))
            and np.array_equal(self.channels, np.repeat(np.arange(size), rep))
        ):
            return {"tensor": self.tensor, "dim": self.dim, "offset": int(self.positions[0]), "repeat": rep}
        return {
            "tensor": self.tensor,
            "dim": self.dim,
            "positions": self.positions.tolist(),
            "channels": self.channels.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], size: int) -> Member:
        tensor, dim = _get(d, "tensor", str), _get(d, "dim", int)
        if "offset" in d:
            off, rep = _get(d, "offset", int), _get(d, "repeat", int)
            if off < 0 or rep < 1:
                raise FileFormatError(f"plan member '{tensor}': offset {off} / repeat {rep} out of range")
            pos = off + np.arange(size * rep, dtype=np.int64)
            ch = np.repeat(np.arange(size, dtype=np.int64), rep)
        else:
            pos = np.asarray(_get(d, "positions", list), dtype=np.int64)
            ch = np.asarray(_get(d, "channels", list), dtype=np.int64)
            if pos.shape != ch.shape or pos.ndim != 1 or (len(ch) and (ch.min() < 0 or ch.max() >= size)):
                raise FileFormatError(f"plan member '{tensor}': positions/channels do not match the group size {size}")
        return cls(tensor, dim, pos, ch)


PlanMember = Member  #: the name a plan's members had when the graph had a type of its own


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """One coupled group: its ``size`` channels, the ones it ``keep``s, where they live."""

    name: str
    size: int
    keep: tuple[int, ...]
    members: tuple[Member, ...]
    criterion: str = "l1"
    #: what one channel is: "channels", attention "heads", conv "groups", the "width" inside conv
    #: groups, or the "query heads" of each key/value head (grouped-query attention)
    unit: str = "channels"

    @property
    def removed(self) -> np.ndarray:
        """Indices of the channels that go."""
        mask = np.ones(self.size, dtype=bool)
        mask[list(self.keep)] = False
        return np.flatnonzero(mask)


@dataclass(frozen=True, eq=False)
class PruningPlan:
    """What to remove from a model, decided before any surgery."""

    groups: tuple[GroupPlan, ...]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    framework: str = "torch"  #: the frontend that made it: "torch" or "keras"
    layout: str = "torch"  #: weight layout of ``shapes``: "torch" (out, in, *k) or "keras" (*k, in, out)
    #: how the budget was met: the allocation's per-group ratios and predicted loss, a latency
    #: target's measured latency and margin (empty for a plain ratio)
    budget: dict[str, Any] = field(default_factory=dict)
    #: layers that computed their weight in ``forward`` and were made plain layers holding it
    #: before planning (``fold_computed_weights``); surgery and loading fold them first
    folded: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[GroupPlan]:
        return iter(self.groups)

    @property
    def channels_before(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(len(g.keep) for g in self.groups)

    @property
    def removes_nothing(self) -> bool:
        """Whether every group keeps all its channels (so does a plan with no groups).

        >>> PruningPlan(groups=()).removes_nothing, PruningPlan(groups=(GroupPlan("a", 2, (0,), ()),)).removes_nothing
        (True, False)
        """
        return self.channels_after == self.channels_before

    def removed_positions(self) -> dict[str, dict[int, np.ndarray]]:
        """For each tensor and dim, the sorted positions that surgery removes."""
        out: dict[str, dict[int, list[np.ndarray]]] = {}
        for g in self.groups:
            gone = np.zeros(g.size, dtype=bool)
            gone[g.removed] = True
            for m in g.members:
                pos = m.positions[gone[m.channels]]
                if len(pos):
                    out.setdefault(m.tensor, {}).setdefault(m.dim, []).append(pos)
        return {
            t: {d: np.unique(np.concatenate(ps)) if len(ps) > 1 else np.sort(ps[0]) for d, ps in dims.items()}
            for t, dims in out.items()
        }

    def table(self, limit: int | None = None) -> str:
        """A readable table: group, its unit, channels before → after, criterion, coupled tensors."""
        rows = [("group", "unit", "channels", "kept", "criterion", "tensors")]
        for g in self.groups[:limit]:
            kept = f"{len(g.keep)} ({len(g.keep) / g.size:.0%})"
            rows.append((g.name, g.unit, str(g.size), kept, g.criterion, str(len(g.members))))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if limit is not None and len(self.groups) > limit:
            lines.append(f"… {len(self.groups) - limit} more groups")
        lines.append(
            f"total: {self.channels_before} → {self.channels_after} channels in {len(self.groups)} groups; "
            f"MACs {self.macs_before:,} → {self.macs_after:,} (estimated)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        folded = {"folded": list(self.folded)} if self.folded else {}  # files without folds stay as they were
        return {
            "version": PLAN_VERSION,
            "framework": self.framework,
            "layout": self.layout,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "config": self.config,
            "budget": self.budget,
            **folded,
            "shapes": {k: list(v) for k, v in sorted(self.shapes.items())},  # the same file bytes every run
            "groups": [
                {
                    "name": g.name,
                    "size": g.size,
                    "keep": list(g.keep),
                    "criterion": g.criterion,
                    "unit": g.unit,
                    "members": [m.to_dict() for m in g.members],
                }
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, d: Any) -> PruningPlan:
        """Rebuild a plan from :meth:`to_dict` output, validating every field (it may come from a hostile file).

        >>> PruningPlan.from_dict({"version": 1, "shapes": {}, "groups": [{"name": "g", "size": 2, "keep": [5]}]})
        Traceback (most recent call last):
        cuttree.errors.FileFormatError: plan group 'g': keep indices out of range 0..1
        """
        if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
            raise FileFormatError(
                f"plan version {d.get('version') if isinstance(d, dict) else None!r} is not {PLAN_VERSION}; "
                "re-create the file with this cuttree version"
            )
        try:
            return cls._from_dict(d)
        except FileFormatError:
            raise
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as e:  # a field of the wrong kind
            raise FileFormatError(
                f"plan is malformed ({type(e).__name__}: {str(e)[:80]}); the file is corrupt"
            ) from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> PruningPlan:
        shapes = {str(k): tuple(_dim(x) for x in _get({"v": v}, "v", list)) for k, v in _get(d, "shapes", dict).items()}
        groups = []
        for g in _get(d, "groups", list):
            if not isinstance(g, dict):
                raise FileFormatError("plan group is not a mapping; the file is corrupt")
            size = _get(g, "size", int)
            keep = tuple(_get({"keep": k}, "keep", int) for k in _get(g, "keep", list))
            if size < 1 or any(k < 0 or k >= size for k in keep) or len(set(keep)) != len(keep):
                raise FileFormatError(f"plan group '{g.get('name')}': keep indices out of range 0..{size - 1}")
            _known_keys(g, GROUP_KEYS, f"plan group '{g.get('name')}'")
            members = []
            for m in _get(g, "members", list):
                if not isinstance(m, dict):
                    raise FileFormatError(
                        f"plan group '{g.get('name')}': a member is not a mapping; the file is corrupt"
                    )
                _known_keys(m, MEMBER_KEYS, f"plan member '{m.get('tensor')}'")
                _check_member(m, size, shapes)
                members.append(Member.from_dict(m, size))
            dims = [(m.tensor, m.dim) for m in members]
            if len(set(dims)) != len(dims):
                raise FileFormatError(f"plan group '{g.get('name')}' lists a tensor dim twice; the file is corrupt")
            criterion, unit = g.get("criterion", "l1"), g.get("unit", "channels")
            if not isinstance(criterion, str) or unit not in UNITS:
                raise FileFormatError(
                    f"plan group '{g.get('name')}': criterion {criterion!r} / unit {unit!r} is not a name and one of "
                    f"{', '.join(UNITS)}; the file is corrupt"
                )
            groups.append(GroupPlan(_get(g, "name", str), size, keep, tuple(members), criterion, unit))
        framework, layout = d.get("framework", "torch"), d.get("layout", "torch")  # older files: all torch
        if framework not in FRAMEWORKS or layout not in FRAMEWORKS:
            raise FileFormatError(
                f"plan framework {framework!r} / layout {layout!r} is not one of {', '.join(FRAMEWORKS)}; "
                "the file is corrupt or from a newer cuttree"
            )
        folded = tuple(
            _get({"folded": n}, "folded", str) for n in _get({"folded": d.get("folded", [])}, "folded", list)
        )
        return cls(
            groups=tuple(groups),
            shapes=shapes,
            macs_before=int(d.get("macs_before", 0)),
            macs_after=int(d.get("macs_after", 0)),
            config=dict(d.get("config", {})),
            framework=framework,
            layout=layout,
            budget=dict(d.get("budget", {})) if isinstance(d.get("budget", {}), dict) else {},
            folded=folded,
        )


FRAMEWORKS = ("torch", "keras")  #: the frontends (and weight layouts) a plan can be made for
UNITS = ("channels", "heads", "groups", "width", "query heads", "layers")  #: what one channel of a group can be
DEPTH_UNIT = "layers"  #: whole blocks of a stack (decoder layers): the group's member is the stack, not a tensor
HEAD_UNITS = ("heads", "query heads")  #: the units that are attention heads (``head_ratio``, the heads check)
SECOND_WALK_UNITS = ("width", "query heads")  #: the units the trace's second walk labels (``group_width``)
MAX_DIM = 2**31  # no real tensor dim is larger; a larger one is a corrupt or hostile file
GROUP_KEYS = {"name", "size", "keep", "criterion", "unit", "members"}
MEMBER_KEYS = {"tensor", "dim", "offset", "repeat", "positions", "channels"}


def _known_keys(d: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise FileFormatError(f"{what} has unknown field {unknown[0]!r}; the file is corrupt or from a newer cuttree")


def _dim(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < MAX_DIM:
        raise FileFormatError(f"plan shape entry {x!r} is not a tensor dim (0 ≤ n < 2^31); the file is corrupt")
    return x


def _check_member(m: dict[str, Any], size: int, shapes: dict[str, tuple[int, ...]]) -> None:
    """A member's positions must lie inside its tensor's recorded dim (before anything is allocated)."""
    tensor, dim = _get(m, "tensor", str), _get(m, "dim", int)
    shape = shapes.get(tensor)
    if shapes and shape is None:
        raise FileFormatError(f"plan member '{tensor}' has no recorded shape; the file is corrupt")
    extent = shape[dim] if shape is not None and 0 <= dim < len(shape) else None
    if dim < 0 or (shape is not None and extent is None):
        raise FileFormatError(f"plan member '{tensor}': dim {dim} is not a dim of its shape {shape}")
    if "offset" in m:
        end = _get(m, "offset", int) + size * _get(m, "repeat", int)
    else:
        positions = _get(m, "positions", list)
        end = max((p + 1 for p in positions if isinstance(p, int)), default=0)
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in positions):
            raise FileFormatError(f"plan member '{tensor}': positions must be non-negative integers")
    if end > (extent if extent is not None else MAX_DIM):
        raise FileFormatError(f"plan member '{tensor}': positions reach {end}, past its dim of {extent}")


def _get(d: dict[str, Any], key: str, typ: type) -> Any:
    if key not in d or not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
        raise FileFormatError(f"plan field '{key}' is missing or not a {typ.__name__}; the file is corrupt")
    return d[key]


def compose(first: PruningPlan, second: PruningPlan) -> PruningPlan:
    """The plan that takes the original model straight to what ``second`` makes of ``first``'s result.

    Groups are matched by name and tensor dims; ``second``'s channel *i* of a group is
    ``first``'s kept channel ``keep[i]``.
    """
    from cuttree.errors import PlanError

    by_name = {g.name: g for g in first.groups}
    later = {g.name: g for g in second.groups}
    groups = []
    for g1 in first.groups:
        g2 = later.get(g1.name)
        if g2 is None:
            groups.append(g1)
            continue
        if {(m.tensor, m.dim) for m in g1.members} != {(m.tensor, m.dim) for m in g2.members} or g2.size != len(
            g1.keep
        ):
            raise PlanError(f"cannot compose plans: group '{g1.name}' couples different tensors in the second plan")
        keep = tuple(g1.keep[i] for i in g2.keep)
        groups.append(GroupPlan(g1.name, g1.size, keep, g1.members, g2.criterion, g1.unit))
    extra = [n for n in later if n not in by_name]
    if extra:
        raise PlanError(f"cannot compose plans: group '{extra[0]}' of the second plan is not in the first")
    return PruningPlan(
        tuple(groups),
        first.shapes,
        first.macs_before,
        second.macs_after,
        second.config,
        first.framework,
        first.layout,
        second.budget,
        first.folded + tuple(n for n in second.folded if n not in first.folded),
    )
