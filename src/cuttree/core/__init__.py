"""The framework-neutral core: grouping, criteria, budgets, the plan, sparsity masks, schedules,
and the flow over the :class:`~cuttree.core.frontend.Frontend` protocol.

Everything here works on numpy arrays and imports neither torch nor keras (a test imports it
with both blocked). Frontends (:mod:`cuttree.frontends.torch`, :mod:`cuttree.frontends.keras`)
read a model into element ids and unions, hand the core numpy arrays at one border, and apply the
plan it returns.
"""
