"""Frontends: the framework-specific rooms, one per framework (reading a model, changing it,
running it): :mod:`cuttree.frontends.torch` and :mod:`cuttree.frontends.keras`. Each implements
the :class:`cuttree.core.frontend.Frontend` protocol in its ``frontend`` module; neither imports
the other's framework.
"""
