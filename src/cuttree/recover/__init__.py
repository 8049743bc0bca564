"""Recovery: fine-tuning with distillation (``train``), checkpoints and random state for
``--resume`` (``checkpoints``, ``rng``), validation and keep-best (``validation``), layer-wise
reconstruction (``reconstruct``), training batches (``batching``) and the whole prune-and-recover
job (``job``).
"""
