"""Run reports: the ``report.json`` every command writes, and the report a person reads.

Every command that produces a result writes one JSON document: what ran (``command``,
``framework``, the resolved ``config``) and what it measured (``before`` / ``after`` figures,
each with a ``metric`` mapping where a metric was computed). ``cuttree run`` and ``prune`` write it
beside the model, ``finetune`` into its run folder, ``eval`` beside the model it evaluated
(``MODEL.eval.json``) unless ``--report`` says where.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cuttree.files import atomic_write


def write_json(path: str | Path, command: str, framework: str, config: Any = None, **fields: Any) -> Path:
    """Write a command's report atomically; ``config`` is a :class:`cuttree.Config` or ``None``.

    >>> import tempfile, json
    >>> d = tempfile.mkdtemp()
    >>> p = write_json(f"{d}/report.json", "eval", "torch", after={"metric": {"top1": 91.5}})
    >>> json.loads(p.read_text())["after"]
    {'metric': {'top1': 91.5}}
    """
    doc = {"command": command, "framework": framework, **fields}
    doc["config"] = config.to_dict() if config is not None else None
    return atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=1)))
