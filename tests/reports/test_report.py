"""Reports people read: report.html (self-contained, rendered in headless Chromium) and report.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Subset

import cuttree
from cuttree.datasets.images import digits
from cuttree.models import resnet20
from cuttree.recover.job import run_job
from cuttree.reports.report import summary_rows, write_report

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CUTTREE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-step run on digits, with a sensitivity analysis beside it."""
    out = tmp_path_factory.mktemp("run")
    train, test = Subset(digits("train"), range(256)), Subset(digits("test"), range(128))
    cfg = cuttree.Config(
        ratio=0.5, steps=2, min_samples=32, calib_samples=64, latency_runs=5,
        finetune={"epochs": 0.25, "batch_size": 32, "checkpoint_every": 0},
    )  # fmt: skip
    torch.manual_seed(0)
    model = resnet20()
    x = (torch.randn(1, 3, 32, 32),)
    s = cuttree.sensitivity(model, x, cfg, train, ratios=(0.5,), samples=64, cache_dir=out / "cache", quiet=True)
    run_job(model, x, cfg, train, test, out, "cuttree.models:resnet20", log=lambda m: None, data_name="digits")
    s.save(out / "sensitivity.json")
    return out


def test_html_and_markdown_carry_the_measured_figures(run_dir: Path) -> None:
    html_path, md_path = write_report(run_dir)
    doc = json.loads((run_dir / "report.json").read_text())
    page, md = html_path.read_text(), md_path.read_text()
    assert not re.search(r"(src|href)=\"https?:", page)  # nothing to fetch: it opens with no network
    params = f"{doc['before']['params']:,}", f"{doc['after']['params']:,}"
    assert all(f"<td>{p}</td>" in page for p in params) and all(f"| {p} |" in md for p in params)
    top1 = f"{doc['after']['metric']['top1']:.2f}"
    assert f"<td>{top1}</td>" in page
    assert page.count("<img ") == 4 and page.count("data:image/png;base64,") == 4
    for name in ("channels", "sensitivity", "metric_vs_macs", "latency"):
        assert f'id="fig-{name}"' in page and (run_dir / "report_files" / f"{name}.png").stat().st_size > 5000
        assert f"![{name}](report_files/{name}.png)" in md
    rows = summary_rows(doc)
    assert [r[0] for r in rows][:2] == ["top-1 (%)", "parameters"] and rows[-1][0] == "latency (median, IQR)"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; `make chromium`)")


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_html_report_renders_in_headless_chromium(run_dir: Path) -> None:
    html_path, _ = write_report(run_dir)
    dom = _browser("--dump-dom", html_path.as_uri())
    assert dom.returncode == 0, dom.stderr[-1000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    images = re.search(r'data-images="(\d+)"', body.group(0))
    decoded = re.search(r'data-decoded="(\d+)"', body.group(0))
    assert images and decoded and images.group(1) == decoded.group(1) == "4", body.group(0)
    assert dom.stdout.count("<figure") == 4 and "Before and after" in dom.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    r = _browser(f"--screenshot={shot}", "--window-size=1200,2600", "--hide-scrollbars", html_path.as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-1000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2600)
        colours: Any = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page


def test_report_of_a_folder_without_a_report_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no report\.json; pass a run folder"):
        write_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        write_report(tmp_path)
