"""The ``cuttree`` command: a thin shell over the Python API, one module per command family
(:mod:`~cuttree.cli.prune`, :mod:`~cuttree.cli.run`, :mod:`~cuttree.cli.finetune`; the Keras side
of each in :mod:`~cuttree.cli.keras`), what they share in :mod:`~cuttree.cli.common`.

Every user error ends in one line on stderr (``cuttree: error: …``) and a non-zero exit status
that says its kind (:data:`cuttree.errors.EXIT_CODES`: 2 bad argument, 3 missing file, 4 corrupt
file, 5 untraceable model, …); no output file is written unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from cuttree import __version__
from cuttree.cli import finetune, prune, run
from cuttree.cli.common import Parser, frontend_of, one_line_warning
from cuttree.errors import CuttreeError, exit_code


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="cuttree", description="Prune neural networks and measure the result.")
    p.add_argument("--version", action="version", version=f"cuttree {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        prune.add_prune,
        prune.add_inspect,
        prune.add_layers,
        run.add_demo,
        run.add_run,
        run.add_report,
        run.add_sensitivity,
        finetune.add_finetune,
        prune.add_export,
        finetune.add_eval,
    ):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            args.frontend = frontend_of(args)
            return int(args.func(args))
    except (ValueError, TypeError, OSError, CuttreeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"cuttree: error: {msg}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("cuttree: interrupted; every file written is complete (partial ones are not kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
