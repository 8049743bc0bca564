"""Every extension point is one ``Registry``; these checks are generated from the tables, so a rule
or a loader registered tomorrow is checked the same way as today's."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

from cuttree.core.frontend import FRONTENDS
from cuttree.core.importance import REGISTRY
from cuttree.core.registry import Registry
from cuttree.datasets.images import DATASETS
from cuttree.errors import CuttreeWarning
from cuttree.frontends.torch.ops import OP_RULES
from cuttree.frontends.torch.rules import MODULE_RULES, NAMED_RULES, ModuleRule, rule_for_module

keras = pytest.importorskip("keras")
from cuttree.frontends.keras.rules import LAYER_RULES, LayerRule  # noqa: E402

TABLES = {"criterion": REGISTRY, "op rule": OP_RULES, "module rule": MODULE_RULES, "layer rule": LAYER_RULES}


@pytest.mark.parametrize("what", sorted(TABLES))
def test_every_table_is_a_registry_that_names_its_entries(what: str) -> None:
    table = TABLES[what]
    assert isinstance(table, Registry) and table.what == what and len(table) > 5
    assert table.names() == sorted(table.names()) and len(set(table.names())) == len(table)


@pytest.mark.parametrize("key", sorted(OP_RULES, key=str), ids=str)
def test_every_op_rule_is_keyed_by_an_aten_packet_and_takes_the_rule_arguments(key: object) -> None:
    assert isinstance(key, torch._ops.OpOverloadPacket)
    assert list(inspect.signature(OP_RULES[key]).parameters) == ["st", "args", "kwargs", "out"]


@pytest.mark.parametrize("key", sorted(MODULE_RULES, key=lambda t: t.__qualname__), ids=lambda t: t.__qualname__)
def test_every_module_rule_is_keyed_by_a_module_class_and_found_for_its_subclasses(key: type) -> None:
    rule = MODULE_RULES[key]
    assert issubclass(key, nn.Module) and isinstance(rule, ModuleRule) and callable(rule.update)
    assert all(isinstance(a, str) and isinstance(d, int) for a, d in rule.out_dims.items())
    sub = type(f"User{key.__name__}", (key,), {})  # a user's subclass, never instantiated
    assert rule_for_module(sub.__new__(sub)) is rule


@pytest.mark.parametrize("name", list(NAMED_RULES))
def test_every_named_rule_names_its_library_and_claims_no_class_of_torch(name: str) -> None:
    library = name.split(".")[0]
    assert library in ("timm", "torchvision", "transformers"), name
    test, rule = NAMED_RULES[name]
    assert isinstance(rule, ModuleRule)
    for cls in (nn.Linear, nn.Conv2d, nn.MultiheadAttention, nn.LayerNorm, nn.Module):
        assert test(cls) is False


@pytest.mark.parametrize("key", sorted(LAYER_RULES, key=lambda t: t.__qualname__), ids=lambda t: t.__qualname__)
def test_every_layer_rule_is_keyed_by_a_keras_operation_class(key: type) -> None:
    rule = LAYER_RULES[key]
    assert issubclass(key, keras.Operation) and isinstance(rule, LayerRule) and callable(rule.propagate)
    assert list(inspect.signature(rule.propagate).parameters) == ["tr", "call"]
    assert all(isinstance(a, str) and isinstance(d, int) for a, d in rule.out_dims.items())
    assert rule.scale is None or rule.scale in rule.out_dims


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loader_takes_a_split(name: str) -> None:
    assert "split" in inspect.signature(DATASETS[name]).parameters


@pytest.mark.parametrize("name", FRONTENDS.names())
def test_every_frontend_loads_under_its_name(name: str) -> None:
    assert FRONTENDS[name].load().name == name


def test_a_second_entry_under_one_key_warns_and_an_overlay_undoes_itself_even_on_error() -> None:
    table: Registry[str, int] = Registry("size")
    table.register("small", 1)
    with pytest.warns(CuttreeWarning, match="size 'small' replaced by a plugin"):
        table.register("small", 2, by="a plugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table.register("small", 2)  # the same value again: nothing replaced, nothing said
    with pytest.raises(RuntimeError), table.overlay({"small": 3, "large": 9}):
        assert table["small"] == 3
        raise RuntimeError
    assert dict(table) == {"small": 2}
