"""The framework-neutral core: imports neither torch nor keras; criteria are a registry Config checks."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import cuttree
from cuttree.core.grouping import Group, Member
from cuttree.core.importance import REGISTRY, criterion, scorer
from cuttree.core.plan import GroupPlan, PlanMember, PruningPlan
from cuttree.errors import FileFormatError

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "keras", "tensorflow", "jax"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


def test_core_imports_with_torch_and_keras_blocked() -> None:
    code = BLOCK + (
        "import cuttree, cuttree.config, cuttree.errors\n"
        "import cuttree.core.labels, cuttree.core.grouping, cuttree.core.importance, cuttree.core.budget\n"
        "import cuttree.core.plan, cuttree.core.masks, cuttree.core.schedule, cuttree.core.sensitivity\n"
        "import importlib, pkgutil, cuttree.core\n"
        "for m in pkgutil.iter_modules(cuttree.core.__path__): importlib.import_module('cuttree.core.' + m.name)\n"
        "c = cuttree.Config(mode='classification', threshold=0.5, min_samples=2, ratio=0.3)\n"
        "assert c.criterion == 'l1'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_cuttree_loads_no_framework_and_leaves_keras_backend_alone() -> None:
    code = "import os, sys, cuttree; print(sorted(m for m in ('torch', 'keras') if m in sys.modules), os.environ.get('KERAS_BACKEND'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "[] None", out.stderr


def test_a_registered_criterion_is_usable_by_name() -> None:
    with pytest.raises(ValueError, match="unknown criterion — did you mean 'taylor'"):
        cuttree.Config(ratio=0.5, criterion="taylr")

    @criterion("reverse_index")
    def reverse_index(group: Group, weights: object, extra: object, seed: int) -> np.ndarray:
        return np.arange(group.size, 0, -1, dtype=np.float64)

    try:
        cfg = cuttree.Config(ratio=0.5, criterion="reverse_index")
        g = Group("g", 4, (Member("w", 0, np.arange(4), np.arange(4)),), ("m",))
        assert scorer(cfg.criterion)(g, {}, {}, 0).tolist() == [4.0, 3.0, 2.0, 1.0]
        assert not REGISTRY["reverse_index"].data_driven
        with pytest.raises(ValueError, match="unstructured pruning takes l1, l2, wanda"):
            cuttree.Config(ratio=0.5, criterion="reverse_index", method="unstructured")
        with pytest.warns(UserWarning, match="criterion 'reverse_index' replaced"):
            criterion("reverse_index")(reverse_index)
    finally:
        REGISTRY.pop("reverse_index")


def test_registry_flags_of_the_builtins() -> None:
    data_driven = {"taylor", "activation", "wanda", "flap", "obs", "sparsegpt"}
    assert {n for n, c in REGISTRY.items() if c.data_driven} == data_driven
    assert {n for n, c in REGISTRY.items() if c.unstructured} == {"l1", "l2", "wanda", "sparsegpt"}
    assert {n: c.needs for n, c in REGISTRY.items() if c.unstructured and c.data_driven} == {
        "wanda": "input_norms",
        "sparsegpt": "hessian",
    }
    assert {n for n, c in REGISTRY.items() if c.structured} == {n for n, c in REGISTRY.items() if c.fn is not None}


def _plan(framework: str, layout: str) -> PruningPlan:
    member = PlanMember("conv/kernel", 3, np.arange(4), np.arange(4))
    return PruningPlan(
        (GroupPlan("conv", 4, (0, 2), (member,)),), {"conv/kernel": (3, 3, 3, 4)}, 10, 5, {}, framework, layout
    )


def test_plan_records_framework_and_layout() -> None:
    d = _plan("keras", "keras").to_dict()
    assert (d["framework"], d["layout"]) == ("keras", "keras")
    back = PruningPlan.from_dict(d)
    assert (back.framework, back.layout, back.groups[0].keep) == ("keras", "keras", (0, 2))
    del d["framework"], d["layout"]  # a file written before the fields existed was made by the torch frontend
    assert PruningPlan.from_dict(d).framework == "torch"


def test_plan_records_the_unit_of_each_group() -> None:
    member = PlanMember("attn.in_proj_weight", 0, np.arange(12), np.repeat(np.arange(3), 4))
    plan = PruningPlan((GroupPlan("attn", 3, (0, 2), (member,), "l1", "heads"),), {"attn.in_proj_weight": (12, 8)})
    d = plan.to_dict()
    assert d["groups"][0]["unit"] == "heads" and PruningPlan.from_dict(d).groups[0].unit == "heads"
    del d["groups"][0]["unit"]  # written before units existed: channels
    assert PruningPlan.from_dict(d).groups[0].unit == "channels"
    assert plan.table().splitlines()[2].split()[:3] == ["attn", "heads", "3"]


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("group", "unit", [0, 0], "plan group 'conv': criterion 'l1' / unit [0, 0] is not a name and one of channels"),
        ("group", "unit", "rows", "unit 'rows' is not a name"),
        ("group", "criterion", 7, "criterion 7 / unit 'channels' is not a name"),
        ("plan", "framework", "jax", "plan framework 'jax' / layout 'keras' is not one of torch, keras"),
        ("plan", "layout", None, "layout None is not one of torch, keras"),
    ],
)
def test_a_plan_with_an_unknown_unit_criterion_or_framework_is_refused(
    where: str, key: str, value: object, message: str
) -> None:
    d = _plan("keras", "keras").to_dict()
    (d["groups"][0] if where == "group" else d)[key] = value
    with pytest.raises(FileFormatError, match=re.escape(message)) as e:
        PruningPlan.from_dict(d)
    assert "\n" not in str(e.value) and str(e.value).endswith(("the file is corrupt", "from a newer cuttree"))


def test_torch_surgery_refuses_a_keras_plan() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(cuttree.SurgeryError, match=r"made for a keras model .* cuttree\.keras\.apply_plan"):
        cuttree.apply_plan(torch.nn.Conv2d(3, 4, 3), _plan("keras", "keras"))


@pytest.mark.parametrize(
    ("ratio", "kept"), [(0.0, (3, 3)), (0.2, (3, 2)), (0.34, (3, 2)), (0.5, (2, 2)), (0.9, (1, 1))]
)
def test_key_value_heads_and_their_query_heads_share_one_head_budget(ratio: float, kept: tuple[int, int]) -> None:
    """SmolLM2's attention: 3 key/value heads × 3 query heads each. The kept query heads come nearest
    to (1 - ratio) of the 9: 0.2 keeps 6 (7.2; 9 would be 1.8 away), 0.5 keeps 4 (4.5); each unit at
    the ratio alone would keep 3 × 3 at 0.2 and 2 × 2 already at 0.34. A ratio on a plain channel group
    beside them is floored as before."""
    from cuttree.core.budget import select
    from cuttree.core.grouping import DependencyGraph
    from cuttree.core.planner import group_budgets

    groups = [
        Group("attn", 3, (), (), ("attn",), "heads"),
        Group("attn:query_heads", 3, (), (), ("attn",), "query heads"),
    ]
    groups.append(Group("mlp", 10, (), (), ("mlp",)))
    graph = DependencyGraph(groups, {}, [], np.zeros(0, dtype=np.int64), {}, [], {}, 0.0, [])
    budgets = group_budgets(graph, cuttree.Config(ratio=ratio), {})
    assert [b.crosses for b in budgets] == [1, 0, None]
    scores = [np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]), np.arange(10.0)]
    keeps = select([g.name for g in groups], scores, budgets, None)
    assert (len(keeps[0]), len(keeps[1]), len(keeps[2])) == (*kept, 10 - int(ratio * 10 + 1e-9))
    assert list(keeps[1]) == [3 - kept[1] + i for i in range(kept[1])]  # the best query-head positions
