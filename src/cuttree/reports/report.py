"""Run reports: the ``report.json`` every command writes, and the report a person reads.

Every command that produces a result writes one JSON document: what ran (``command``,
``framework``, the resolved ``config``) and what it measured (``before`` / ``after`` figures,
each with a ``metric`` mapping where a metric was computed). ``cuttree run`` and ``prune`` write it
beside the model, ``finetune`` into its run folder, ``eval`` beside the model it evaluated
(``MODEL.eval.json``) unless ``--report`` says where.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuttree.files.atomic import atomic_write

if TYPE_CHECKING:
    from cuttree.config import Config


def write_json(path: str | Path, command: str, framework: str, config: Config | None = None, **fields: Any) -> Path:
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


# -- the report a person reads: report.html (self-contained) and report.md, from report.json --


def load_report(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A report and its folder, from a run folder (its ``report.json``) or a ``.json`` file."""
    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"'{p}' has no report.json; pass a run folder written by `cuttree run` or a report .json file")
    try:
        doc = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"'{f}' is not valid JSON ({e.msg} at line {e.lineno}); it is not a cuttree report") from None
    if not isinstance(doc, dict) or ("before" not in doc and "after" not in doc):
        raise ValueError(f"'{f}' is not a cuttree report (no before/after figures)")
    return doc, f.parent


def _metric_key(doc: dict[str, Any]) -> str | None:
    from cuttree.core.results import metric_key

    for side in ("after", "before"):
        if (key := metric_key((doc.get(side) or {}).get("metric") or {})) is not None:
            return key
    return None


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(figure, before, after, change)`` rows: the metric, parameters, MACs, size, latency."""
    from cuttree.core.results import METRICS, Measurements, metric_change, speed_change

    b, a = doc.get("before") or {}, doc.get("after") or {}
    rows: list[tuple[str, str, str, str]] = []
    key = _metric_key(doc)
    if key is not None:
        mb, ma = (b.get("metric") or {}).get(key), (a.get("metric") or {}).get(key)
        change = metric_change(key, mb, ma) if mb is not None and ma is not None else ""
        rows.append((METRICS[key].label, _num(mb, ".2f"), _num(ma, ".2f"), change))
    for name, k, fmt, scale in (
        ("parameters", "params", ",", 1),
        (f"MACs (counted, batch {b.get('batch_size', a.get('batch_size', 1))})", "macs", ",", 1),
        ("size on disk (MB)", "size_bytes", ".2f", 1e6),
    ):
        if k in b and k in a:
            x, y = (b[k] / scale, a[k] / scale) if scale != 1 else (b[k], a[k])
            rows.append((name, format(x, fmt), format(y, fmt), f"{x / y:.2f}× smaller" if y else ""))
    if b.get("latency_ms") is not None and a.get("latency_ms") is not None:
        mb_, ma_ = Measurements.from_dict(b), Measurements.from_dict(a)
        rows.append(("latency (median, IQR)", mb_.latency_text(), ma_.latency_text(), speed_change(mb_, ma_)))
    return rows


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _plan_rows(doc: dict[str, Any], folder: Path) -> list[tuple[str, int, int, str]]:
    """(group, channels, kept, unit) per group: from the report, else from the model file's plan."""
    if isinstance(doc.get("plan"), dict):
        return [(g, int(v[0]), int(v[1]), str(v[2])) for g, v in doc["plan"].items()]
    model = folder / str(doc.get("model", ""))
    if doc.get("model") and model.is_file() and model.suffix == ".cuttree":
        from cuttree.files.cuttree_file import read_metadata

        plan = read_metadata(model)["plan"]
        return [(g.name, g.size, len(g.keep), g.unit) for g in plan.groups]
    return []


def _figures(doc: dict[str, Any], folder: Path) -> dict[str, bytes]:
    """PNG plots, by name: channels kept per group, sensitivity curves, metric vs MACs, latency."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figs: dict[str, bytes] = {}

    def png(fig: Any) -> bytes:
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    rows = _plan_rows(doc, folder)
    if rows:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 3.6))
        pos = list(range(len(rows)))
        ax.bar(pos, [r[1] for r in rows], color="#d9d9d9", label="before")
        ax.bar(pos, [r[2] for r in rows], color="#3b75af", label="kept")
        ax.set_xticks(pos, [r[0] for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("channels (heads, groups)")
        ax.set_title("Channels kept per group")
        ax.legend()
        figs["channels"] = png(fig)
    sens_file = folder / str(doc.get("sensitivity") or "sensitivity.json")
    if sens_file.is_file():
        from cuttree.core.sensitivity import Sensitivity

        s = Sensitivity.load(sens_file)
        curves = s.curves()
        worst = sorted(curves, key=lambda g: -max(d for _, d in curves[g]))
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, g in enumerate(worst):
            pts = [(0.0, 0.0), *curves[g]]
            style: dict[str, Any] = {"lw": 1.6, "label": g} if i < 8 else {"lw": 0.7, "color": "#bbbbbb"}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, **style)
        ax.set_xlabel("ratio of the group's channels removed (that group alone)")
        ax.set_ylabel(f"{s.metric} drop (points)")
        ax.set_title(f"Sensitivity: {len(curves)} groups, {s.samples} samples (the 8 most sensitive named)")
        ax.legend(fontsize=6)
        figs["sensitivity"] = png(fig)
    from cuttree.core.results import METRICS

    key = _metric_key(doc)
    hist = doc.get("history") or []
    if key and hist and "macs" in hist[0] and (doc.get("before") or {}).get("metric"):
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [doc["before"]["macs"]] + [h["macs"] for h in hist]
        pruned = [h["metric_after_pruning"][key] for h in hist]
        tuned = [h["metric_after_finetune"][key] for h in hist]
        ax.plot(xs[:1], [doc["before"]["metric"][key]], "ks", label="dense")
        ax.plot(xs[1:], pruned, "o--", color="#c44e52", label="after pruning")
        ax.plot(xs, [doc["before"]["metric"][key], *tuned], "o-", color="#3b75af", label="after fine-tuning")
        ax.set_xlabel("MACs")
        label = METRICS[key].label
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.set_title(f"{label} against MACs, step by step")
        ax.legend()
        figs["metric_vs_macs"] = png(fig)
    b, a = doc.get("before") or {}, doc.get("after") or {}
    if b.get("latency_ms") is not None and a.get("latency_ms") is not None:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        med = [b["latency_ms"], a["latency_ms"]]
        lo = [m - (d.get("latency_q1_ms") or m) for m, d in zip(med, (b, a), strict=True)]
        hi = [(d.get("latency_q3_ms") or m) - m for m, d in zip(med, (b, a), strict=True)]
        ax.bar(["before", "after"], med, yerr=[lo, hi], capsize=6, color=["#d9d9d9", "#3b75af"])
        ax.set_ylabel("ms per forward pass")
        ax.set_title(f"Latency, batch {b.get('batch_size', 1)} (median, IQR)")
        figs["latency"] = png(fig)
    return figs


CAPTIONS = {
    "channels": "Channels kept per group (grey: before; blue: kept).",
    "sensitivity": "Metric drop after pruning each group alone, by ratio (sensitivity analysis).",
    "metric_vs_macs": "The task metric against MACs: dense, after each pruning step, after each fine-tuning.",
    "latency": "Latency before and after, timed interleaved in one loop (bars: median; whiskers: interquartile range).",
}


def write_report(path: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained: plots embedded, no network) and ``report.md`` (plots
    in ``report_files/``) beside the run's ``report.json``; returns both paths."""
    import base64
    import html

    doc, folder = load_report(path)
    figs = _figures(doc, folder)
    rows = summary_rows(doc)
    title = f"cuttree {doc.get('command', 'run')}: {doc.get('arch') or doc.get('source') or doc.get('model') or folder.name}"
    cfg = doc.get("config") or {}
    budget = doc.get("budget") or {}
    facts = [
        ("framework", str(doc.get("framework", "?"))),
        ("data", str(doc.get("data", "")) or "—"),
        ("mode", "language model" if _metric_key(doc) == "perplexity" else str(cfg.get("mode", "—"))),
        ("criterion", str(cfg.get("criterion", "—"))),
        (
            "budget",
            ", ".join(
                f"{k} {cfg[k]}"
                for k in ("ratio", "macs_target", "params_target", "latency_target", "threshold")
                if cfg.get(k) is not None
            )
            or "—",
        ),
        ("allocation", str(budget.get("allocation", cfg.get("allocation", "uniform")))),
    ]
    if "seconds" in doc:
        facts.append(("wall time", f"{doc['seconds']:.0f} s"))

    def table_html(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return f"<table>{f'<thead><tr>{th}</tr></thead>' if head else ''}<tbody>{trs}</tbody></table>"

    parts = [
        f"<h1>{html.escape(title)}</h1>",
        table_html([], facts),
        "<h2>Before and after</h2>",
        table_html(["figure", "before", "after", "change"], rows),
    ]
    for name, data in figs.items():
        b64 = base64.b64encode(data).decode()
        parts.append(
            f'<figure id="fig-{name}"><img alt="{name}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1.5em 0}"
    )
    # once loaded, the page records how many of its images decoded (checked by the tests in a browser)
    script = (
        "window.addEventListener('load',function(){var i=[].slice.call(document.images);"
        "document.body.setAttribute('data-images',i.length);"
        "document.body.setAttribute('data-decoded',i.filter(function(x){return x.complete&&x.naturalWidth>0}).length)})"
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style><script>{script}</script></head><body>{''.join(parts)}</body></html>"
    )
    html_path = atomic_write(folder / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    files = folder / "report_files"
    md = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts), "", "## Before and after", ""]
    md += ["| figure | before | after | change |", "|---|---|---|---|", *(f"| {' | '.join(r)} |" for r in rows), ""]
    for name, data in figs.items():
        atomic_write(files / f"{name}.png", lambda p, d=data: p.write_bytes(d))  # type: ignore[misc]
        md += [f"![{name}](report_files/{name}.png)", "", f"*{CAPTIONS[name]}*", ""]
    md_path = atomic_write(folder / "report.md", lambda p: p.write_text("\n".join(md), encoding="utf-8"))
    return html_path, md_path
