"""Pytest setup for the whole repository (tests and the docstring examples under src/).

The Keras tests and examples run on the torch backend unless the caller chose one
(``make test-keras-tf`` sets ``KERAS_BACKEND=tensorflow``); this must happen before keras is
first imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

if os.environ["KERAS_BACKEND"] != "torch":
    # Triton (loaded by torch's flop counter) crashes the process when it loads after TensorFlow
    # or jaxlib; the CLI imports it first anyway, the test session must too.
    import torch.utils.flop_counter  # noqa: F401
