"""Which code a file may run: building an architecture a file names means importing and calling
it, so only callables defined under trusted module prefixes are built (``torchvision.models``,
``cuttree.models``, plus those the caller trusts).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from cuttree.errors import FileFormatError

TRUSTED_PREFIXES = ("torchvision.models", "cuttree.models")


def parse_arch(arch: str) -> tuple[str, str]:
    mod, sep, attr = arch.partition(":")
    if not sep or not mod or not attr or not all(part.isidentifier() for part in [*mod.split("."), *attr.split(".")]):
        raise ValueError(
            f"arch '{arch}' is not an import path; write it as 'package.module:callable', e.g. torchvision.models:resnet18"
        )
    return mod, attr


def resolve_arch(arch: str, trusted: Iterable[str] = ()) -> Callable[..., nn.Module]:
    """Import ``module:callable``, only under trusted prefixes (a file must not run arbitrary code).

    The callable itself must be defined under a trusted prefix, and the path to it must not pass
    through another module: ``torchvision.models.resnet:torch.hub.load`` names a trusted module,
    but reaches ``torch.hub.load`` (which runs a ``hubconf.py``) through its ``import torch``.

    >>> resolve_arch("cuttree.models:resnet20").__name__
    'resnet20'
    >>> resolve_arch("torchvision.models.resnet:torch.hub.load")
    Traceback (most recent call last):
    cuttree.errors.FileFormatError: arch 'torchvision.models.resnet:torch.hub.load' reaches 'torch', outside the trusted modules ['torchvision.models', 'cuttree.models']; name the model's own module and callable
    """
    mod, attr = parse_arch(arch)
    allowed = (*TRUSTED_PREFIXES, *trusted)

    def is_trusted(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in allowed)

    def outside(where: str) -> FileFormatError:
        return FileFormatError(
            f"arch '{arch}' reaches '{where}', outside the trusted modules {list(allowed)}; name the model's own "
            "module and callable"
        )

    if not is_trusted(mod):
        raise FileFormatError(
            f"arch '{arch}' is outside the trusted modules {list(allowed)}; if it names your own model's module, allow "
            f"it with --trust {mod} (trusted=['{mod}'] in Python, or build= a callable returning the model), never for "
            "a file you did not make"
        )
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
            if isinstance(obj, types.ModuleType) and not is_trusted(obj.__name__):
                raise outside(obj.__name__)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"arch '{arch}' cannot be imported ({e}); install its package or fix the name") from None
    if not callable(obj):
        raise ValueError(f"arch '{arch}' is not callable; name a model class or factory function")
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str) or not is_trusted(owner):
        raise outside(str(owner))  # e.g. a function another module imported into a trusted one
    return obj  # type: ignore[no-any-return]


def build_model(arch: str, arch_kwargs: dict[str, Any] | None = None, trusted: Iterable[str] = ()) -> nn.Module:
    """Build ``arch(**arch_kwargs)`` and check that it is an ``nn.Module``."""
    model = resolve_arch(arch, trusted)(**(arch_kwargs or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"arch '{arch}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
