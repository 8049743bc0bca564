"""Progress for long commands: a live bar with ETA on a terminal, plain log lines elsewhere.

On a terminal (stderr is a TTY) a rich progress bar redraws in place; anywhere else (CI, a pipe,
a log file) the same progress comes as a few plain lines, one per tenth of the work, each with
the elapsed time and an ETA; ``quiet`` silences both.

>>> lines = []
>>> with Progress(4, "eval", log=lines.append, terminal=False) as p:
...     for _ in range(4):
...         p.advance()
>>> [line.split(" elapsed")[0] for line in lines]
['eval: 1/4 (25%)', 'eval: 2/4 (50%)', 'eval: 3/4 (75%)', 'eval: 4/4 (100%)']
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any


def on_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress:
    """``total`` units of work called ``label``; :meth:`advance` after each."""

    def __init__(
        self,
        total: int,
        label: str,
        log: Callable[[str], object] | None = None,
        quiet: bool = False,
        terminal: bool | None = None,
        console: Any = None,
    ) -> None:
        self.total, self.label, self.done = max(int(total), 1), label, 0
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.quiet = quiet
        self.terminal = on_terminal() if terminal is None else terminal
        self._console = console
        self._bar: Any = None
        self._task: Any = None
        self._next_line = 1
        self._t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        self._t0 = time.perf_counter()
        if self.terminal and not self.quiet:
            from rich import progress as rp

            self._bar = rp.Progress(
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                rp.TextColumn("ETA"),
                rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[info]}"),
                console=self._console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, info="")
        return self

    def advance(self, n: int = 1, info: str = "") -> None:
        """``n`` more units done; ``info`` (e.g. the running loss) is shown beside the bar."""
        self.done = min(self.done + n, self.total)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info=info)
            return
        # plain lines: the first unit, then every tenth of the work, and the last unit
        if self.done >= self._next_line or self.done == self.total:
            elapsed = time.perf_counter() - self._t0
            eta = elapsed / self.done * (self.total - self.done)
            extra = f" {info}" if info else ""
            self.log(
                f"{self.label}: {self.done}/{self.total} ({self.done / self.total:.0%}) "
                f"elapsed {elapsed:.0f} s, ETA {eta:.0f} s{extra}"
            )
            step = max(self.total // 10, 1)
            self._next_line = (self.done // step + 1) * step

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
