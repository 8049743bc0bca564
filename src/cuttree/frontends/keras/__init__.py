"""The Keras 3 frontend: graph walk of Functional and Sequential models (nested ones included),
the layer-rules table, rebuild-surgery, sparsity masks and recovery, on any Keras backend.

Nothing here is imported by ``import cuttree``; :mod:`cuttree.keras` is the public API.
"""
