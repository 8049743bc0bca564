"""The documentation keeps its promises: every relative link in the README and ``docs/`` resolves
(anchors included), ``docs/index.md`` links every page, the README stays a five-minute read, and
every code block marked runnable runs.

A block is runnable when the line before its opening fence is ``<!-- runnable -->`` (an HTML
comment: invisible on GitHub). A ``python`` block runs in a fresh interpreter, a ``sh`` block in
bash with ``set -euo pipefail`` and this interpreter's ``cuttree`` first on ``PATH``; each in an
empty working folder holding a copy of the repository's ``cut.yaml`` and ``recipes/``, so that the
text stays what a user in a checkout would paste.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_LIMIT = 12 * 1024  # bytes: a README read in five minutes
MARKER = "<!-- runnable -->"
TIMEOUT_S = 600
PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell"}

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it starts (1-based line of the fence), its language and text."""

    page: Path
    line: int
    lang: str
    code: str
    runnable: bool

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> tuple[list[str], list[Block], list[int]]:
    """The prose lines (code blocks blanked, so line numbers hold), the code blocks, and the lines
    of markers that do not stand right before a fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    prose: list[str] = []
    blocks: list[Block] = []
    stray: list[int] = []
    pending: int | None = None  # line of a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence is None:
            prose.append(line)
            if line.strip() == MARKER:
                if pending is not None:
                    stray.append(pending)
                pending = i + 1
            elif line.strip() and pending is not None:
                stray.append(pending)
                pending = None
            i += 1
            continue
        ticks, lang = fence.group(1), fence.group(2).lower()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i])
            i += 1
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", pending is not None))
        pending = None
        prose.extend([""] * (i + 1 - start))
        i += 1
    if pending is not None:
        stray.append(pending)
    return prose, blocks, stray


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces
    to hyphens (``### `round_to` and `target` `` → ``round_to-and-target``)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _, _ = parse(page)
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose:
        m = HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every link and image in the prose (code spans and blocks skipped)."""
    prose, _, _ = parse(page)
    found = []
    for n, line in enumerate(prose, start=1):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((n, m.group(1)))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for line, target in links(page):
        if SCHEME.match(target):  # http(s), mailto: not checked here (no network)
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / path_part).resolve()
        where = f"{page.relative_to(ROOT)}:{line}: ({target})"
        if not dest.exists():
            problems.append(f"{where} points to {dest}, which does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    return problems


def runnable_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse(page)[1] if b.runnable]


RUNNABLE = runnable_blocks()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


def test_the_index_links_every_docs_page() -> None:
    linked = {(INDEX.parent / t.partition("#")[0]).resolve() for _, t in links(INDEX) if not SCHEME.match(t)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p != INDEX and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not link {', '.join(missing)}; add a line for each"
    readme = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md") if not SCHEME.match(t)}
    assert INDEX.resolve() in readme, "README.md does not link docs/index.md"


def test_the_readme_is_a_five_minute_read() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes, over {README_LIMIT:,}: move detail into docs/"


def test_runnable_markers_stand_before_python_or_shell_blocks() -> None:
    assert RUNNABLE, "no block is marked runnable"
    stray = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES for n in parse(p)[2]]
    assert not stray, f"'{MARKER}' not directly before a code fence at {', '.join(stray)}"
    odd = [f"{b.name} ({b.lang or 'no language'})" for b in RUNNABLE if b.lang not in PYTHON | SHELL]
    assert not odd, f"runnable blocks must be python or sh: {', '.join(odd)}"


def _workdir(tmp_path: Path) -> Path:
    """An empty folder with what a reader in a checkout has beside them: the sample configs."""
    shutil.copy(ROOT / "cut.yaml", tmp_path / "cut.yaml")
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    return tmp_path


def _env(block: Block, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # where this interpreter's `cuttree` script lives
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["CUTTREE_CACHE"] = str(tmp_path / ".cache")  # sensitivity caches stay in the test's folder
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"  # no downloads, ever
    env["MPLBACKEND"] = "Agg"
    if "keras" in block.code:
        env["KERAS_BACKEND"] = "torch"
    return env


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"{b.page.name}-{i}" for i, b in enumerate(RUNNABLE)])
def test_runnable_block_runs(block: Block, tmp_path: Path) -> None:
    cwd = _workdir(tmp_path)
    if block.lang in PYTHON:
        script = cwd / "example.py"
        script.write_text(block.code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        cuttree = Path(sys.executable).parent / "cuttree"
        assert cuttree.is_file(), f"{cuttree} is missing: install cuttree into this environment (make setup)"
        script = cwd / "example.sh"
        script.write_text("set -euo pipefail\n" + block.code, encoding="utf-8")
        command = ["bash", str(script)]
    try:
        out = subprocess.run(
            command, cwd=cwd, env=_env(block, tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.name}: still running after {TIMEOUT_S} s; runnable examples must take seconds")
    tail = (out.stdout[-3000:] + "\n" + out.stderr[-3000:]).strip()
    assert out.returncode == 0, f"{block.name} ({block.lang}) exited {out.returncode}:\n{block.code}\n---\n{tail}"


def commands() -> list[tuple[str, list[str]]]:
    """Every ``cuttree`` command line in the shell blocks of the README and the docs (runnable or
    not): ``(where, argv)``, continuation lines joined, comments and environment assignments
    dropped, ``torchrun … -m cuttree.cli`` read as ``cuttree``. Lines with a placeholder (``...``,
    ``…``, ``[--flag]``) are sketches, not commands, and are left out."""
    found = []
    for page in PAGES:
        for block in parse(page)[1]:
            if block.lang not in SHELL:
                continue
            for n, line in enumerate(block.code.replace("\\\n", " ").splitlines()):
                if "..." in line or "…" in line or re.search(r"\[--", line):
                    continue
                try:
                    argv = shlex.split(line, comments=True)
                except ValueError:
                    continue
                while argv and re.match(r"^[A-Z_]+=", argv[0]):
                    argv = argv[1:]
                if argv[:1] == ["torchrun"] and "cuttree.cli" in argv:
                    argv = ["cuttree", *argv[argv.index("cuttree.cli") + 1 :]]
                if argv[:1] == ["cuttree"]:
                    found.append((f"{block.name}+{n}", argv[1:]))
    return found


COMMANDS = commands()


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_is_valid_as_written(where: str, argv: list[str]) -> None:
    """Each command's flags parse, the configs it names load with its --set overrides, and the
    files it reads from the repository or the shared data exist (the commands that take
    seconds also run, as runnable blocks)."""
    from cuttree.cli.main import parser
    from cuttree.config import Config, parse_set
    from cuttree.datasets.images import data_root

    try:
        args = parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `cuttree {' '.join(argv)}` does not parse")
    config = getattr(args, "config", None)
    if config:
        assert (ROOT / config).is_file(), f"{where}: --config {config} is not in the repository"
        Config.from_yaml(ROOT / config, parse_set(getattr(args, "set", None) or []))
    for flag in ("weights", "model"):
        path = getattr(args, flag, None)
        if path and path.startswith("../shared/data/"):
            if not data_root().is_dir():
                pytest.skip(f"the shared data folder is absent ({data_root()})")
            assert (data_root() / path.removeprefix("../shared/data/")).is_file(), f"{where}: {path} does not exist"


SHORT = ["--limit", "300", "--set", "finetune.epochs=0.1", "--set", "latency_runs=1", "--quiet"]


def _shortened(argv: list[str]) -> list[str]:
    """A long documented job cut to seconds: 300 samples a split (CamVid's: 40), a tenth of an
    epoch, one timed run, the CPU where no GPU is (a sensitivity analysis scores 32 samples)."""
    import torch

    out = list(argv)
    if "--device" in out and not torch.cuda.is_available():
        out[out.index("--device") + 1] = "cpu"
    if "--samples" in out:
        out[out.index("--samples") + 1] = "32"
    if "camvid" in out:  # 360×480 class maps: 40 images (BN recalibration needs the recipe's 32)
        return [*out, "--limit", "40", *SHORT[2:]]
    return out + (SHORT if out[0] == "run" else ["--limit", "300", "--quiet"])


def test_the_long_documented_jobs_run_as_written_when_shortened(tmp_path: Path) -> None:
    """Every documented `cuttree run` and `cuttree sensitivity` on the shared data, in the order
    the pages give them (a run that reads a sensitivity file comes after the command that writes
    it), shortened by appended options only; a command on a file the reader makes (my.keras) is
    the reader's, and so is one on a language model file (``--gguf``/``--hf``: the reader's model;
    ``run`` on a language model is tested on a tiny one in tests/cli/test_language_cli.py)."""
    from cuttree.datasets.images import data_root

    if not data_root().is_dir():
        pytest.skip(f"the shared data folder is absent ({data_root()})")
    cwd = _workdir(tmp_path)
    seen: set[tuple[str, ...]] = set()
    env = {**os.environ, "KERAS_BACKEND": "torch"}  # the user's cache: the decoded images are shared
    cuttree = Path(sys.executable).parent / "cuttree"
    ran = 0
    for where, argv in COMMANDS:
        if argv[0] not in ("run", "sensitivity") or {"my.keras", "--gguf", "--hf"} & set(argv) or tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        args = [a.replace("../shared/data", str(data_root())) for a in _shortened(argv)]
        done = subprocess.run(
            [str(cuttree), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        assert done.returncode == 0, f"{where}: cuttree {' '.join(args)}\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 5
