"""From labels to coupled groups: the dependency graph a plan is made from.

A *channel* is one connected component of element ids: every tensor position in it must go
together. A *group* is a set of channels that touch exactly the same tensor dims (a layer's
output channels with the norms and consumers that follow them; a whole residual stream). Groups
are named after their first producer (conv/linear/dense) in model order, so configs can address
them. A frontend says, per tensor, which layer owns it and which dim is that layer's own output
channels (a :class:`Role`); everything else is numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cuttree.core.labels import N_SENTINELS, Label, LabelState, Pin
from cuttree.core.plan import SECOND_WALK_UNITS, Member
from cuttree.errors import did_you_mean, warn


@dataclass(frozen=True)
class Group:
    """Channels that are pruned together, with every tensor dim they live in."""

    name: str
    size: int
    members: tuple[Member, ...]
    modules: tuple[str, ...]
    owners: tuple[str, ...] = ()  # layers whose own output channels these are
    # "channels", attention "heads", conv "groups", the "width" inside conv groups, or the
    # "query heads" of each key/value head under grouped-query attention
    unit: str = "channels"

    def member(self, tensor: str, dim: int) -> Member | None:
        """The member for ``tensor``'s ``dim``, if the group has one."""
        return next((m for m in self.members if m.tensor == tensor and m.dim == dim), None)


@dataclass(frozen=True)
class Role:
    """What a frontend knows about one tensor: its layer, that layer's output dim, producer or not."""

    layer: str
    out_dim: int | None = None
    producer: bool = False


@dataclass
class DependencyGraph:
    """Everything planning needs: groups, pinned reasons, MAC terms, tensor shapes."""

    groups: list[Group]
    protected: dict[str, str]  # layer name -> why its output channels stay
    mac_terms: list[tuple[int, list[np.ndarray]]]  # MACs and per-factor component ids
    comp_group: np.ndarray  # component id -> (group index, channel) packed as g * 2**32 + c, or -1
    shapes: dict[str, tuple[int, ...]]
    outputs: list[tuple[int, ...]]
    unsupported: dict[str, int]
    trace_seconds: float
    unreached: list[str]  # layers whose parameters the eval-mode forward never used
    # A second labelling of the same walk where grouped convs were labelled by the width inside a
    # group (see :func:`with_width_groups`): its component ids → (group index, channel) as
    # ``comp_group``, and the MAC terms' factors in its component ids. A position is kept when
    # both labellings keep it. ``None`` when the model has no grouped convs or the unit is off.
    width_comp_group: np.ndarray | None = None
    width_mac_factors: list[list[np.ndarray]] | None = None
    # Depth: for each stack of blocks that is a group of unit "layers" (named after the stack), the
    # parameter count of each block (what removing it saves; see :func:`with_depth_group`).
    block_params: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def macs(self) -> int:
        """MACs of the traced forward (conv, matmul and attention; what FLOP counters count)."""
        return sum(m for m, _ in self.mac_terms)

    def table(self, checked: Collection[str] = ()) -> str:
        """The prunable groups (name, size, unit, owners) and the layers kept whole, with why;
        ``checked`` names the groups that pruning keeps whole after its checks on the model's code
        (listed as kept whole, not as prunable).

        >>> g = DependencyGraph([Group("conv", 8, (), ("conv",), ("conv",))], {"fc": "output"}, [], np.zeros(0), {}, [], {}, 0.0, [])
        >>> print(g.table())  # doctest: +NORMALIZE_WHITESPACE
        1 prunable groups (8 channels):
          conv    8 channels  owners: conv
        kept whole (why):
          fc      output
        """
        free = [g for g in self.groups if g.name not in checked]
        lines = [f"{len(free)} prunable groups ({sum(g.size for g in free)} channels):"]
        lines += [f"  {g.name:40s} {g.size:6d} {g.unit:8s}  owners: {', '.join(g.owners)}" for g in free]
        lines.append("kept whole (why):")
        lines += [f"  {name:40s} {why}" for name, why in self.protected.items()]
        lines += [f"  {name:40s} a group the checks of prune keep whole (see the warning)" for name in checked]
        return "\n".join(lines)

    def group(self, name: str) -> Group:
        """The group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise ValueError(f"unknown group '{name}'{did_you_mean(name, [g.name for g in self.groups])}")


def components(state: LabelState) -> np.ndarray:
    """Connected components of the recorded unions: element id → component id. Equal pieces of a
    split that did not end up coupled piece by piece are pinned first (:meth:`LabelState.align`)."""
    comp = _components(state)
    if state.pin_misaligned(comp):
        comp = _components(state)  # pinning only merges components: the other splits stay aligned
    return comp


def _components(state: LabelState) -> np.ndarray:
    n = state.next_id
    if state.union_a:
        a = np.concatenate(state.union_a)
        b = np.concatenate(state.union_b)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    g = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    return comp.astype(np.int64)


def _free_positions(
    tensors: Mapping[str, tuple[Label, ...]], comp: np.ndarray, pinned: np.ndarray
) -> tuple[list[tuple[str, int]], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Every (tensor, dim, position) whose channel is free, as flat arrays: the (tensor, dim)
    keys, and per key the channels (components), the key's index and the positions."""
    keys: list[tuple[str, int]] = []
    cs, ks, ps = [], [], []
    for name, labs in tensors.items():
        for d, lab in enumerate(labs):
            if lab is None:
                continue
            c = comp[lab]
            free = ~pinned[c]
            if not free.any():
                continue
            pos = np.flatnonzero(free)
            cs.append(c[pos])
            ks.append(np.full(len(pos), len(keys), dtype=np.int64))
            ps.append(pos)
            keys.append((name, d))
    return keys, cs, ks, ps


def _signature_groups(C: np.ndarray, K: np.ndarray, ncomp: int, nkeys: int) -> np.ndarray:
    """Component → group id (-1 where unused): a channel's signature is the set of tensor dims it
    touches, hashed (with fixed random keys) so that channels with one signature share a group."""
    rng = np.random.default_rng(0)
    key_hash = rng.integers(1, 2**62, size=nkeys, dtype=np.int64).astype(np.uint64)
    pair = np.unique(C * nkeys + K)
    sig = np.zeros(ncomp, dtype=np.uint64)
    np.add.at(sig, pair // nkeys, key_hash[pair % nkeys])
    used = np.unique(C)
    _, gid_of_used = np.unique(sig[used], return_inverse=True)
    comp_gid = np.full(ncomp, -1, dtype=np.int64)
    comp_gid[used] = gid_of_used
    return comp_gid


def group_channels(
    state: LabelState,
    tensors: Mapping[str, tuple[Label, ...]],
    roles: Mapping[str, Role],
    shapes: dict[str, tuple[int, ...]],
    outputs: Sequence[tuple[int, ...]],
    trace_seconds: float = 0.0,
    unreached: Sequence[str] = (),
) -> DependencyGraph:
    """Group the channels of a finished walk: ``tensors`` maps each tensor name to its labels."""
    comp = components(state)
    ncomp = int(comp.max()) + 1 if len(comp) else 0
    pinned = np.zeros(ncomp, dtype=bool)
    pinned[comp[:N_SENTINELS]] = True

    keys, cs, ks, ps = _free_positions(tensors, comp, pinned)
    base = dict(
        protected=_protected(tensors, comp, roles),
        mac_terms=[(t.macs, [comp[f] for f in t.factors]) for t in state.mac_terms],
        shapes=shapes,
        outputs=[tuple(o) for o in outputs],
        unsupported=dict(state.unsupported),
        trace_seconds=trace_seconds,
        unreached=list(unreached),
    )
    if not cs:
        return DependencyGraph(groups=[], comp_group=np.full(ncomp, -1, dtype=np.int64), **base)  # type: ignore[arg-type]
    C, K, P = np.concatenate(cs), np.concatenate(ks), np.concatenate(ps)

    comp_gid = _signature_groups(C, K, ncomp, len(keys))
    unit_of = {int(c): kind for ids, kind in state.units for c in np.unique(comp[ids])}
    G = comp_gid[C]
    order = np.lexsort((P, K, G))
    G, K, P, C = G[order], K[order], P[order], C[order]
    bounds = np.flatnonzero(np.diff(G)) + 1
    groups: list[Group] = []
    comp_group = np.full(ncomp, -1, dtype=np.int64)
    for gi, (g_start, g_end) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, len(G)], strict=True)):
        gk, gp, gc = K[g_start:g_end], P[g_start:g_end], C[g_start:g_end]
        # Channel order: first occurrence in the group's first tensor dim (positions are sorted).
        c0 = gc[gk == gk[0]]
        rank = np.full(ncomp, -1, dtype=np.int64)
        rank[c0[::-1]] = np.arange(len(c0) - 1, -1, -1)
        chans = c0[rank[c0] == np.arange(len(c0))]
        rank[chans] = np.arange(len(chans))
        comp_group[chans] = (gi << 32) + np.arange(len(chans))
        kb = np.flatnonzero(np.diff(gk)) + 1
        members = tuple(
            Member(keys[int(gk[s])][0], keys[int(gk[s])][1], gp[s:e].copy(), rank[gc[s:e]])
            for s, e in zip(np.r_[0, kb], np.r_[kb, len(gk)], strict=True)
        )
        unit = next((unit_of[c] for c in chans.tolist() if c in unit_of), "channels")
        groups.append(_named_group(members, len(chans), roles, unit))
    # Model order (first tensor dim touched), so tables and names read top to bottom.
    firsts = [int(K[s]) for s in np.r_[0, bounds]]
    order_g = np.argsort(firsts, kind="stable")
    remap = np.empty(len(order_g), dtype=np.int64)
    remap[order_g] = np.arange(len(order_g))
    hit = comp_group >= 0
    comp_group[hit] = (remap[comp_group[hit] >> 32] << 32) + (comp_group[hit] & 0xFFFFFFFF)
    groups = _dedupe_names([groups[i] for i in order_g])
    return DependencyGraph(groups=groups, comp_group=comp_group, **base)  # type: ignore[arg-type]


def with_width_groups(graph: DependencyGraph, width: DependencyGraph) -> DependencyGraph:
    """``graph`` (grouped convs labelled by whole groups, grouped-query attention by key/value
    heads) plus the ``"width"`` and ``"query heads"`` groups of ``width``, the same walk with
    grouped convs labelled by the width inside a group and query heads by their position among
    their kv head's.

    The two units cross: a grouped conv's channel goes when its group goes or its position within
    the group goes (a query head when its kv head goes or its position goes), so one tensor dim
    may belong to two groups at once (surgery removes the union). The second walk's groups are
    named after their producer with ``:width`` or ``:query_heads``.
    """
    if len(width.mac_terms) != len(graph.mac_terms) or any(
        a != b or [len(f) for f in fa] != [len(f) for f in fb]
        for (a, fa), (b, fb) in zip(width.mac_terms, graph.mac_terms, strict=True)
    ):
        warn(
            "the trace's two walks of the model did not line up (its forward ran different operations on the same "
            "inputs, or counted different sizes), so grouped convolutions keep the width inside their groups and "
            "grouped-query attention the query heads of each key/value head (they still lose whole groups and whole "
            "key/value heads); make the forward deterministic in eval mode"
        )
        return graph
    extra = [(i, g) for i, g in enumerate(width.groups) if g.unit in SECOND_WALK_UNITS]
    if not extra:
        return graph
    n = len(graph.groups)
    new_index = np.full(len(width.groups), -1, dtype=np.int64)
    for k, (i, _) in enumerate(extra):
        new_index[i] = n + k
    cg = width.comp_group.copy()
    hit = cg >= 0
    idx = new_index[cg[hit] >> 32]
    cg[hit] = np.where(idx >= 0, (idx << 32) + (cg[hit] & 0xFFFFFFFF), -1)
    named = [dataclasses.replace(g, name=f"{g.name}:{g.unit.replace(' ', '_')}") for _, g in extra]
    return dataclasses.replace(
        graph,
        groups=[*graph.groups, *named],
        width_comp_group=cg,
        width_mac_factors=[f for _, f in width.mac_terms],
    )


def with_depth_group(
    graph: DependencyGraph, stack: str, spans: Sequence[tuple[int, int]], block_params: Sequence[int]
) -> DependencyGraph:
    """``graph`` plus one group of unit ``"layers"`` named ``stack``: its channels are the stack's
    blocks (decoder layers), its one member the stack itself (a pseudo tensor of shape
    ``(blocks,)``). Each block's MAC terms (``spans``: the terms its forward recorded) gain a factor,
    the block, so that removing a block removes its MACs; ``block_params`` gives what it holds.

    >>> g = DependencyGraph([], {}, [(10, []), (5, []), (1, [])], np.zeros(0, dtype=np.int64), {}, [], {}, 0.0, [])
    >>> d = with_depth_group(g, "layers", [(0, 1), (1, 2)], [3, 4])
    >>> d.groups[0].unit, d.shapes["layers"], d.block_params, [len(f) for _, f in d.mac_terms]
    ('layers', (2,), {'layers': (3, 4)}, [1, 1, 0])
    """
    n, index = len(spans), len(graph.groups)

    def widened(cg: np.ndarray) -> np.ndarray:  # one new component per block, in the new group
        return np.concatenate([cg, (index << 32) + np.arange(n, dtype=np.int64)])

    def with_blocks(factors: list[list[np.ndarray]], first: int) -> list[list[np.ndarray]]:
        out = [list(f) for f in factors]
        for k, (a, b) in enumerate(spans):
            for t in range(a, b):
                out[t].append(np.array([first + k], dtype=np.int64))
        return out

    positions = np.arange(n, dtype=np.int64)
    group = Group(stack, n, (Member(stack, 0, positions, positions),), (stack,), (stack,), "layers")
    terms = with_blocks([f for _, f in graph.mac_terms], len(graph.comp_group))
    return dataclasses.replace(
        graph,
        groups=[*graph.groups, group],
        comp_group=widened(graph.comp_group),
        mac_terms=[(m, f) for (m, _), f in zip(graph.mac_terms, terms, strict=True)],
        width_comp_group=None if graph.width_comp_group is None else widened(graph.width_comp_group),
        width_mac_factors=None
        if graph.width_mac_factors is None or graph.width_comp_group is None
        else with_blocks(graph.width_mac_factors, len(graph.width_comp_group)),
        shapes={**graph.shapes, stack: (n,)},
        block_params={**graph.block_params, stack: tuple(int(p) for p in block_params)},
    )


def _named_group(members: tuple[Member, ...], size: int, roles: Mapping[str, Role], unit: str) -> Group:
    mods: list[str] = []
    owners: list[str] = []
    producer = None
    for m in members:
        role = roles[m.tensor]
        if role.layer not in mods:
            mods.append(role.layer)
        if role.out_dim == m.dim:
            if role.layer not in owners:
                owners.append(role.layer)
            if role.producer:
                producer = producer or role.layer
    first = roles[members[0].tensor].layer or members[0].tensor
    name = producer or (owners[0] if owners else first)
    return Group(name=name, size=size, members=members, modules=tuple(mods), owners=tuple(owners), unit=unit)


def _dedupe_names(groups: list[Group]) -> list[Group]:
    seen: dict[str, int] = {}
    out = []
    for g in groups:
        n = seen.get(g.name, 0)
        seen[g.name] = n + 1
        out.append(g if n == 0 else Group(f"{g.name}#{n}", g.size, g.members, g.modules, g.owners, g.unit))
    return out


def _protected(tensors: Mapping[str, tuple[Label, ...]], comp: np.ndarray, roles: Mapping[str, Role]) -> dict[str, str]:
    """Layers whose own output channels are all pinned, with the reason (for messages)."""
    reason = np.full(int(comp.max()) + 1 if len(comp) else 0, -1, dtype=np.int64)
    for p in reversed(Pin):  # the lowest reason wins where sentinels share a component
        reason[comp[int(p)]] = int(p)
    out: dict[str, str] = {}
    for name, labs in tensors.items():
        role = roles[name]
        d = role.out_dim
        if d is None or labs[d] is None:
            continue
        r = reason[comp[labs[d]]]
        if (r >= 0).all():
            out.setdefault(role.layer, Pin(int(r[0])).name.lower())
    return out
