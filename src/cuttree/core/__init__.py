"""The framework-neutral core: grouping, criteria, budgets, the plan, sparsity masks, schedules.

Everything here works on numpy arrays and imports neither torch nor keras (a test imports it
with both blocked). Frontends (:mod:`cuttree.graph` and friends for PyTorch,
:mod:`cuttree.frontends.keras` for Keras 3) read a model into element ids and unions, hand the
core numpy arrays at one border, and apply the plan it returns.
"""
