"""The ``cuttree`` command: shared parsing in :mod:`~cuttree.cli.main`, the Keras side of each
command in :mod:`~cuttree.cli.keras`."""

from cuttree.cli.main import main, parser

__all__ = ["main", "parser"]
