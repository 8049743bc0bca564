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


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name if it has none): a cause quoted in
    one of cuttree's one-line errors.

    >>> first_line(ValueError("bad shape\\nmore detail")), first_line(KeyError())
    ('bad shape', 'KeyError')
    """
    text = str(error)
    return text.splitlines()[0] if text.strip() else type(error).__name__


class ResourceError(CuttreeError):
    """The job needs more memory than this machine has available (said before trying)."""


#: The ``cuttree`` command's exit status for each kind of failure, most specific first; a script
#: can tell a bad argument (2) from a corrupt file (4) or a model that cannot be traced (5).
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (FileFormatError, 4, "a file is corrupt, hostile or not a cuttree file"),
    (TraceError, 5, "the model cannot be run or traced with the example inputs"),
    (PlanError, 6, "the configuration asks for a plan that cannot be made"),
    (SurgeryError, 7, "applying the plan did not give a working model"),
    (ResourceError, 8, "not enough memory for the job"),
    (CuttreeError, 9, "export or deploy failed (e.g. ONNX Runtime does not match torch)"),
    (OSError, 3, "a file or folder is missing, unreadable or unwritable"),
    (ValueError, 2, "a bad argument or configuration value"),
    (TypeError, 2, "a bad argument or configuration value"),
)


def exit_code(error: BaseException) -> int:
    """The exit status the ``cuttree`` command ends with for ``error`` (see :data:`EXIT_CODES`).

    >>> exit_code(ValueError("ratio=2 is out of range")), exit_code(FileFormatError("bad file"))
    (2, 4)
    >>> exit_code(FileNotFoundError("x.cuttree"))
    3
    """
    return next((code for kind, code, _ in EXIT_CODES if isinstance(error, kind)), 1)
