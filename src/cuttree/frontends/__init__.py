"""Frontends: the framework-specific rooms (reading a model, changing it, running it).

The PyTorch frontend still lives at its historical paths (:mod:`cuttree.graph`,
:mod:`cuttree.frontends.torch.rules`, :mod:`cuttree.frontends.torch.surgery`, …); the Keras 3 frontend is
:mod:`cuttree.frontends.keras`, used through :mod:`cuttree.keras`.
"""
