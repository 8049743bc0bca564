"""The one error family cuttree raises for graph, plan, surgery and file failures.

Bad *input* (a config value, a layer name) raises ``ValueError``/``TypeError`` like any Python
library; what goes wrong inside the engine raises a :class:`CuttreeError`. Every message says the
value, the rule and the fix, on one line.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


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


class CuttreeWarning(UserWarning):
    """A warning of cuttree's own: about the model, the config or the data, with what to do. The
    command line prints these as ``cuttree: warning: …`` and other libraries' with their origin."""


def warn(message: str, category: type[Warning] = CuttreeWarning) -> None:
    """Issue ``message`` at the first caller outside cuttree, so it names the user's line.

    A fixed ``stacklevel`` points into cuttree whenever the warning is raised a few calls deep
    (``prune`` → ``make_plan`` → a check); this walks the stack instead.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("kept 2 group(s) whole")
    >>> caught[0].filename == __file__ or caught[0].filename.startswith("<doctest")
    True
    """
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


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
