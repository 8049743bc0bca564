"""A stand-in accelerator for tests: tensors that say they live on another device.

Without a GPU, code that forgets which device a model lives on passes every CPU test and fails
on the first GPU. This module registers PyTorch's ``privateuseone`` device key as a Python
backend named ``standin``, whose tensors wrap CPU tensors but report ``device.type == "standin"``. It checks
what CUDA checks: an op may not mix tensors of this device with CPU tensors (0-dim CPU scalars
excepted, as on CUDA), and ``.numpy()`` refuses them, so a stray ``.numpy()`` or a CPU tensor fed
to a device model fails here as it would on a GPU. Nothing is faster or asynchronous: it tests
where tensors are, not CUDA itself (autocast, CUDA events and nccl still need a real GPU).

    from standin_device import DEVICE   # registers the backend once, on import
    model.to(DEVICE)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

_CPU = torch.device("cpu")


class StandIn(torch.Tensor):
    """A CPU tensor (``elem``) that reports ``DEVICE`` and checks device mixing op by op."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> StandIn:
        assert type(elem) is torch.Tensor and elem.device.type == "cpu"
        r = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=DEVICE,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    def __repr__(self) -> str:  # type: ignore[override]
        return f"StandIn({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        transfer = name in ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize")
        if not transfer:
            _check_same_device(name, args, kwargs)
        to_cpu = (
            name == "_to_copy" and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
        )
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if to_cpu:
            return out
        # an in-place or out= op returns its argument: hand back that very wrapper
        mine = {id(t.elem): t for t in tree_flatten((args, kwargs))[0] if isinstance(t, StandIn)}
        return tree_map(lambda x: mine[id(x)] if id(x) in mine else _wrap(x), out)


def _check_same_device(name: str, args: Any, kwargs: Any) -> None:
    for t in tree_flatten((args, kwargs))[0]:
        if isinstance(t, torch.Tensor) and not isinstance(t, StandIn) and t.device.type == "cpu" and t.dim() > 0:
            raise RuntimeError(
                f"stand-in device: aten.{name} got a CPU tensor of shape {tuple(t.shape)} beside "
                f"{DEVICE} tensors (Expected all tensors to be on the same device)"
            )


def _unwrap(x: Any) -> Any:
    if isinstance(x, StandIn):
        return x.elem
    if isinstance(x, torch.device) and x.type == DEVICE.type:
        return _CPU
    return x


def _wrap(x: Any) -> Any:
    return StandIn(x) if type(x) is torch.Tensor and x.device.type == "cpu" else x


class Backend:
    """The device module (``torch.standin``): one device, and a count of synchronise calls."""

    synchronized = 0

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def _is_in_bad_fork(self) -> bool:
        return False

    def manual_seed_all(self, seed: int) -> None:
        pass

    def synchronize(self, device: Any = None) -> None:
        Backend.synchronized += 1


def _register() -> None:
    _setup_privateuseone_for_python_backend(rename="standin", backend_module=Backend())
    lib = torch.library.Library("aten", "IMPL")  # kept alive by the module global below

    def empty_memory_format(size: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
                            pin_memory: Any = None, memory_format: Any = None) -> torch.Tensor:  # fmt: skip
        return StandIn(torch.empty(size, dtype=dtype, layout=layout, memory_format=memory_format))

    def empty_strided(size: Any, stride: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
                      pin_memory: Any = None) -> torch.Tensor:  # fmt: skip
        return StandIn(torch.empty_strided(size, stride, dtype=dtype, layout=layout))

    lib.impl("empty.memory_format", empty_memory_format, "PrivateUse1")
    lib.impl("empty_strided", empty_strided, "PrivateUse1")
    _LIBS.append(lib)


_LIBS: list[Any] = []
_register()
DEVICE = torch.device("standin", 0)
