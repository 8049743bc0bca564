"""The one error family cuttree raises for graph, plan, surgery and file failures.

Bad *input* (a config value, a layer name) raises ``ValueError``/``TypeError`` like any Python
library; what goes wrong inside the engine raises a :class:`CuttreeError`. Every message says the
value, the rule and the fix, on one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CuttreeError(Exception):
    """Base of cuttree's own errors (tracing, planning, surgery, files)."""


class TraceError(CuttreeError):
    """The model could not be run or traced with the example inputs."""


class PlanError(CuttreeError):
    """The configuration asks for a plan that cannot be made (e.g. it would empty a layer)."""


class SurgeryError(CuttreeError):
    """Applying a plan did not give a working model."""


class FileFormatError(CuttreeError):
    """A file is not a valid, safe cuttree file."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" — did you mean 'x'?"`` for the nearest choice, or ``""`` when none is close.

    >>> did_you_mean("clasifier.6", ["classifier.6", "features.0"])
    " — did you mean 'classifier.6'?"
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


class ResourceError(CuttreeError):
    """The job needs more memory than this machine has available (said before trying)."""
