"""From scores and a budget to the channels each group keeps.

Local scope removes ``ratio`` of every group; global scope ranks channels of all groups
together (scores divided by their group's best, so layers of different scale compare) and
removes ``ratio`` of all of them. ``threshold`` removes what scores below that fraction of the
group's best; beside a budget it removes that *too* (a channel goes if either selects it, as
unstructured sparsity's masks do), so the budget is the least a group loses. ``macs_target`` searches
the ratio whose plan keeps that fraction of the MACs, estimated from the trace, then widens
groups one step each toward the next larger plan while the budget holds (the most importance
per MAC first), so that rounded widths, which make every group step at once, still land close
to the target. Every group keeps at least ``min_channels`` (or all it has, if fewer), and kept
counts are rounded up to a multiple of ``round_to``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from cuttree.core.grouping import DependencyGraph
from cuttree.core.plan import DEPTH_UNIT
from cuttree.errors import PlanError


@dataclass(frozen=True)
class GroupBudget:
    """The resolved settings of one group (top-level config plus any per-layer override)."""

    ratio: float | None
    threshold: float | None
    min_channels: int
    round_to: int
    in_global_pool: bool
    nearest: bool = False  # ``ratio`` × size rounded to the nearest whole unit (heads), not floored
    # grouped-query attention: the index of the group this one crosses (key/value heads ↔ the query
    # heads of every kv head); the two share one head budget (:func:`head_counts`)
    crosses: int | None = None


def n_ratio(b: GroupBudget, size: int) -> int:
    """How many of ``size`` channels ``b.ratio`` removes: floored, or for a group of attention
    heads (``nearest``) rounded to the nearest whole head (a half kept), so that a ratio of 0.2
    of three key/value heads removes one rather than none, and 0.5 of three removes one.

    >>> n_ratio(GroupBudget(0.2, None, 1, 1, False), 3), n_ratio(GroupBudget(0.2, None, 1, 1, False, nearest=True), 3)
    (0, 1)
    """
    if b.ratio is None:
        return 0
    if b.nearest:
        return min(math.ceil(b.ratio * size - 0.5 - 1e-9), size - 1)  # a ratio below 1 never takes all
    return math.floor(b.ratio * size + 1e-9)


def head_counts(ratio: float, kv: int, per_kv: int) -> tuple[int, int]:
    """How many key/value heads and how many query heads of each kv head ``ratio`` removes when
    the two units cross (grouped-query attention: ``kv`` × ``per_kv`` query heads in all).

    The kept query heads, (kept kv heads) × (kept query heads per kv head), come nearest to ``(1 - ratio)`` of all
    (a half kept); between equal counts, the one keeping more kv heads (fewer shared key/value
    projections lost). Each unit at the ratio alone would compound: 0.34 of 3 × 3 heads would keep
    2 × 2 = 4 of 9.

    >>> head_counts(0.2, 3, 3), head_counts(0.34, 3, 3), head_counts(0.5, 3, 3), head_counts(0.5, 2, 4)
    ((0, 1), (0, 1), (1, 1), (0, 2))
    >>> head_counts(0.05, 3, 3), head_counts(0.9, 3, 3)
    ((0, 0), (2, 2))
    """
    want = (1.0 - ratio) * kv * per_kv
    options = [(a, b) for a in range(1, kv + 1) for b in range(1, per_kv + 1)]
    keep_kv, keep_q = min(options, key=lambda o: (abs(o[0] * o[1] - want) - 1e-9 * o[0] * o[1], -o[0]))
    return kv - keep_kv, per_kv - keep_q


def removed_by_ratio(sizes: Sequence[int], budgets: Sequence[GroupBudget]) -> list[int]:
    """How many channels each group's ratio removes: :func:`n_ratio`, or for two crossing head
    groups (``crosses``, both at the same ratio) :func:`head_counts` of the pair."""
    out = [n_ratio(b, n) for n, b in zip(sizes, budgets, strict=True)]
    for i, b in enumerate(budgets):
        j = b.crosses
        if j is None or j < i or b.ratio is None or budgets[j].ratio != b.ratio or budgets[j].in_global_pool:
            continue
        out[i], out[j] = head_counts(b.ratio, sizes[i], sizes[j])
    return out


def _finish(name: str, size: int, order: np.ndarray, n_rm: int, b: GroupBudget) -> np.ndarray:
    if n_rm >= size:
        raise PlanError(
            f"the budget would remove all {size} channels of '{name}' (ratio={b.ratio}); a layer must keep at "
            f"least min_channels={b.min_channels}; use a ratio below 1.0 or a per-layer override for '{name}'"
        )
    keep_n = max(size - n_rm, min(b.min_channels, size))
    keep_n = min(size, math.ceil(keep_n / b.round_to) * b.round_to)
    return np.sort(order[size - keep_n :])


def _n_threshold(score: np.ndarray, t: float | None) -> int:
    """How many channels score below ``t`` × the group's best (never the best itself).

    >>> _n_threshold(np.array([2.0, 3.0, 4.0, 5.0]), 0.7), _n_threshold(np.array([-2.0, -1.0]), 0.5)
    (2, 1)
    """
    if t is None:
        return 0
    return min(int((score < t * score.max()).sum()), len(score) - 1)


def select(
    names: Sequence[str], scores: Sequence[np.ndarray], budgets: Sequence[GroupBudget], ratio: float | None
) -> list[np.ndarray]:
    """Kept channel indices per group. ``ratio`` is the global ratio (``None`` for local scope)."""
    orders = [np.argsort(s, kind="stable") for s in scores]
    n_rm = [0] * len(scores)
    by_ratio = removed_by_ratio([len(s) for s in scores], budgets)
    for i, (s, b) in enumerate(zip(scores, budgets, strict=True)):
        if b.in_global_pool:
            continue
        n_rm[i] = max(by_ratio[i], _n_threshold(s, b.threshold))
    pool = [i for i, b in enumerate(budgets) if b.in_global_pool]
    if pool and ratio is not None:
        if ratio >= 1.0:
            i = pool[0]
            _finish(names[i], len(scores[i]), orders[i], len(scores[i]), budgets[i])
        norm, gid, rank = [], [], []
        for i in pool:
            s = scores[i]
            top = s.max()
            cap = len(s) - min(budgets[i].min_channels, len(s))
            ranks = np.empty(len(s), dtype=np.int64)
            ranks[orders[i]] = np.arange(len(s))
            ok = ranks < cap
            norm.append((s / top if top > 0 else np.zeros_like(s))[ok])
            gid.append(np.full(int(ok.sum()), i))
            rank.append(ranks[ok])
        total = sum(len(scores[i]) for i in pool)
        want = math.floor(ratio * total + 1e-9)
        all_norm, all_gid = np.concatenate(norm), np.concatenate(gid)
        chosen = np.argsort(all_norm, kind="stable")[:want]
        counts = np.bincount(all_gid[chosen], minlength=len(scores))
        for i in pool:
            n_rm[i] = max(int(counts[i]), _n_threshold(scores[i], budgets[i].threshold))
    return [_finish(names[i], len(s), orders[i], n_rm[i], budgets[i]) for i, s in enumerate(scores)]


def estimate_macs(graph: DependencyGraph, keeps: Sequence[np.ndarray]) -> int:
    """MACs of the model after keeping ``keeps``, from the traced MAC terms (no forward pass)."""
    sizes = np.array([g.size for g in graph.groups], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(sizes)]
    kept = np.zeros(int(offsets[-1]), dtype=bool)
    for off, k in zip(offsets, keeps, strict=False):
        kept[off + k] = True

    def kept_of(cg: np.ndarray) -> np.ndarray:
        hit = cg >= 0
        comp_kept = np.ones(len(cg), dtype=bool)
        comp_kept[hit] = kept[offsets[cg[hit] >> 32] + (cg[hit] & 0xFFFFFFFF)]
        return comp_kept

    comp_kept = kept_of(graph.comp_group)
    total = 0.0
    if graph.width_comp_group is None or graph.width_mac_factors is None:
        for macs, factors in graph.mac_terms:
            frac = 1.0
            for f in factors:
                frac *= comp_kept[f].sum() / len(f)
            total += macs * frac
        return round(total)
    # Grouped convs carry two units: a position stays when both labellings keep it.
    width_kept = kept_of(graph.width_comp_group)
    for (macs, factors), wide in zip(graph.mac_terms, graph.width_mac_factors, strict=True):
        frac = 1.0
        for f, w in zip(factors, wide, strict=True):
            frac *= (comp_kept[f] & width_kept[w]).sum() / len(f)
        total += macs * frac
    return round(total)


def estimate_params(graph: DependencyGraph, keeps: Sequence[np.ndarray], params: Collection[str], total: int) -> int:
    """Parameters of the model after keeping ``keeps``: ``total`` less what each parameter tensor
    among the groups' members (``params``: their names) loses along its pruned dims, and every
    parameter of a removed block (a group of unit ``layers``: ``graph.block_params``)."""
    removed: dict[str, dict[int, np.ndarray]] = {}  # tensor → dim → positions that go (groups may share a dim)
    dropped: list[str] = []  # the prefixes of removed blocks' tensors
    lost = 0
    for g, keep in zip(graph.groups, keeps, strict=True):
        gone = np.ones(g.size, dtype=bool)
        gone[keep] = False
        if g.unit == DEPTH_UNIT:
            lost += sum(graph.block_params[g.name][k] for k in np.flatnonzero(gone))
            dropped += [f"{g.name}.{k}." for k in np.flatnonzero(gone)]
            continue
        for m in g.members:
            if m.tensor in params:
                hit = gone[m.channels]
                if hit.any():
                    dims = removed.setdefault(m.tensor, {})
                    mask = dims.setdefault(m.dim, np.zeros(graph.shapes[m.tensor][m.dim], dtype=bool))
                    mask[m.positions[hit]] = True
    for t, dims in removed.items():
        if dropped and t.startswith(tuple(dropped)):
            continue  # counted whole with its block
        shape = graph.shapes[t]
        after = math.prod(size - (int(dims[d].sum()) if d in dims else 0) for d, size in enumerate(shape))
        lost += math.prod(shape) - after
    return total - lost


def search_macs(
    graph: DependencyGraph,
    scores: Sequence[np.ndarray],
    budgets: Sequence[GroupBudget],
    target: float,
    global_scope: bool,
) -> list[np.ndarray]:
    """The plan of the smallest ratio that keeps at most ``target`` of the MACs, widened toward it."""
    return search(graph, scores, budgets, target, global_scope, lambda k: estimate_macs(graph, k), graph.macs, "macs")


def search(
    graph: DependencyGraph,
    scores: Sequence[np.ndarray],
    budgets: Sequence[GroupBudget],
    target: float,
    global_scope: bool,
    cost: Callable[[Sequence[np.ndarray]], int],
    full: int,
    what: str,
    uniform: bool = False,
) -> list[np.ndarray]:
    """The plan of the smallest ratio that keeps at most ``target`` of ``cost`` (bisection), then
    widened group by group toward the next larger plan while it stays within (:func:`_fill`);
    ``full`` is the unpruned model's cost and ``what`` its name in errors (``macs``, ``params``).
    With ``uniform`` every plan tried is made uniform (:func:`uniform_keeps`) and none is widened
    group by group (which would make layers differ)."""
    names = [g.name for g in graph.groups]
    goal = target * full

    def plan_at(r: float) -> list[np.ndarray]:
        bs = budgets if global_scope else [b if b.ratio is not None else _with_ratio(b, r) for b in budgets]
        keeps = select(names, scores, bs, r if global_scope else None)
        return uniform_keeps(graph, scores, keeps, budgets) if uniform else keeps

    lo, hi = 0.0, 0.999
    best = plan_at(hi)
    if cost(best) > goal:
        reach = cost(best) / max(full, 1)
        raise PlanError(
            f"{what}_target={target} is unreachable: keeping min_channels in every prunable group still leaves "
            f"{reach:.1%} of the {'MACs' if what == 'macs' else 'parameters'}; raise {what}_target to at least "
            f"{math.ceil(reach * 1000) / 1000} or lower min_channels"
        )
    for _ in range(30):
        mid = (lo + hi) / 2
        keeps = plan_at(mid)
        if cost(keeps) <= goal:
            hi, best = mid, keeps
        else:
            lo = mid
    return best if uniform else _fill(best, plan_at(lo), scores, cost, goal)


def family(name: str) -> str:
    """The name of a group with its layer indices blanked: the groups one layer type has in every layer.

    >>> family("model.layers.12.mlp.gate_proj"), family("model.layers.3.self_attn.q_proj:query_heads")
    ('model.layers.#.mlp.gate_proj', 'model.layers.#.self_attn.q_proj:query_heads')
    """
    return re.sub(r"(?<=\.)\d+(?=\.)", "#", name)


def uniform_keeps(
    graph: DependencyGraph, scores: Sequence[np.ndarray], keeps: Sequence[np.ndarray], budgets: Sequence[GroupBudget]
) -> list[np.ndarray]:
    """``keeps`` with the same kept count in every group of one :func:`family` (same unit and
    size): the mean of their counts, rounded to the nearest and up to ``round_to``, each group
    keeping its best. A plan whose layers all have one width is what a Hugging Face config can
    describe (``save_pretrained``); under ``scope: global`` the count is the global ranking's mean.

    >>> from cuttree.core.grouping import Group
    >>> g = DependencyGraph([Group("l.0.fc", 4, (), ()), Group("l.1.fc", 4, (), ())], {}, [], np.zeros(0, dtype=np.int64), {}, [], {}, 0.0, [])
    >>> b = [GroupBudget(None, None, 1, 1, False)] * 2
    >>> [k.tolist() for k in uniform_keeps(g, [np.arange(4.0), np.array([4.0, 3, 2, 1])], [np.array([3]), np.arange(3)], b)]
    [[2, 3], [0, 1]]
    """
    families: dict[tuple[str, int, str], list[int]] = {}
    for i, g in enumerate(graph.groups):
        if g.unit != DEPTH_UNIT:
            families.setdefault((g.unit, g.size, family(g.name)), []).append(i)
    out = list(keeps)
    for (_, size, _), members in families.items():
        if len(members) < 2 or len({len(keeps[i]) for i in members}) == 1:
            continue
        step = budgets[members[0]].round_to
        n = math.floor(sum(len(keeps[i]) for i in members) / len(members) + 0.5)
        n = min(size, max(1, math.ceil(n / step) * step))
        for i in members:
            out[i] = np.sort(np.argsort(scores[i], kind="stable")[size - n :])
    return out


def _fill(
    best: list[np.ndarray],
    over: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    cost: Callable[[Sequence[np.ndarray]], int],
    goal: float,
) -> list[np.ndarray]:
    """Widen groups of ``best`` to their width in ``over`` (the next larger plan, over the budget)
    one group at a time while the cost stays within ``goal``: most importance per unit of cost
    first (scores divided by the group's best, as global scope compares them).

    With widths rounded to a block, one ratio step moves every group by a block at once, and the
    MACs between two steps (e.g. 56% and 64% of a VGG's) are out of reach of a uniform ratio.

    >>> import numpy as np
    >>> best, over = [np.array([1]), np.array([0])], [np.array([0, 1]), np.array([0, 1])]
    >>> scores = [np.array([1.0, 2.0]), np.array([4.0, 1.0])]
    >>> [k.tolist() for k in _fill(best, over, scores, lambda k: sum(len(x) for x in k), 3)]
    [[0, 1], [0]]
    """
    base = cost(best)
    steps = []
    for i, (b, o) in enumerate(zip(best, over, strict=True)):
        if len(o) > len(b):
            s = scores[i]
            top = float(np.abs(s).max()) or 1.0
            gain = float(np.abs(s[np.setdiff1d(o, b)]).sum()) / top
            extra = cost([*best[:i], o, *best[i + 1 :]]) - base
            steps.append((-gain / max(extra, 1), i))
    for _, i in sorted(steps):
        trial = [*best[:i], over[i], *best[i + 1 :]]
        if cost(trial) <= goal:
            best = trial
    return best


def _with_ratio(b: GroupBudget, r: float) -> GroupBudget:
    return dataclasses.replace(b, ratio=r)
