"""Text for language models, as windows of token ids: a calibration text, an evaluation text,
or a user's own text files.

There is no WikiText offline; texts that the package registries carry stand in:

- ``wikipedia-eval`` and ``wikipedia-calib``: English Wikipedia articles (the source WikiText
  was drawn from), from the shortened dump of the first enwiki articles (*Anarchism*, *Autism*,
  *Albedo*, *Abraham Lincoln*, *Aristotle*, …) that ``gensim`` 4.4.0's wheel on PyPI carries as
  test data. ``make llm`` copies it into the cache folder. Redirects are dropped, the wiki markup
  is reduced to plain text (:func:`wiki_plain`), and the articles are dealt alternately: the 1st,
  3rd, 5th, … are ``wikipedia-eval`` (held out) and the 2nd, 4th, … ``wikipedia-calib``.
- ``python-docs``, the calibration text: the Python documentation's topic pages that every Python
  ships (``pydoc_data.topics``, about 113k tokens for SmolLM2's tokenizer), technical prose.
- ``botchan``, the evaluation text: *Botchan* by Natsume Sōseki, in Yasotaro Morri's English
  translation (Project Gutenberg #8868; about 70k tokens of a novel's prose), which the
  ``sentencepiece`` 0.2.3 source release on PyPI carries as ``test/botchan.txt``. ``make llm``
  copies it into the cache folder (``$CUTTREE_CACHE``, else ``~/.cache/cuttree``); the Project
  Gutenberg header and licence are cut off when it is read.
- ``text:PATH``: a UTF-8 file, or every ``*.txt`` file in a folder (sorted by name, joined by
  blank lines).

A text becomes non-overlapping windows of ``length`` consecutive tokens, tokenised as one stream
without special tokens (a trailing part shorter than a window is dropped).

>>> class Chars:  # a tokenizer: one id per character
...     def __call__(self, text, add_special_tokens=False):
...         return {"input_ids": [ord(c) for c in text]}
>>> windows(Chars(), "abcdefgh", length=3).tolist()
[[97, 98, 99], [100, 101, 102]]
"""

from __future__ import annotations

import bz2
import html
import os
import re
from pathlib import Path
from typing import Any

import torch

BOTCHAN = "botchan.txt"
#: the sentencepiece source release that carries Botchan, and where inside it
BOTCHAN_SOURCE = ("sentencepiece==0.2.3", "sentencepiece-0.2.3/test/botchan.txt")


#: the gensim wheel whose test data holds the Wikipedia articles, and the file inside it
WIKIPEDIA = "enwiki-shortened.xml.bz2"
WIKIPEDIA_SOURCE = (
    "gensim==4.4.0",
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
)


def cache_dir() -> Path:
    """Where fetched texts live: ``$CUTTREE_CACHE``, else ``~/.cache/cuttree``."""
    return Path(os.environ.get("CUTTREE_CACHE") or Path.home() / ".cache" / "cuttree")


def text(name: str) -> str:
    """The text called ``name``: ``wikipedia-eval``, ``wikipedia-calib``, ``python-docs``,
    ``botchan`` or ``text:PATH`` (module docstring)."""
    if name == "python-docs":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    if name == "botchan":
        path = cache_dir() / BOTCHAN
        if not path.is_file():
            raise FileNotFoundError(
                f"'{path}' does not exist: the evaluation text comes from the {BOTCHAN_SOURCE[0]} source release; "
                "run `make llm` (or set CUTTREE_CACHE to the folder that holds botchan.txt)"
            )
        return _gutenberg_body(path.read_text(encoding="utf-8-sig"))
    if name in ("wikipedia-eval", "wikipedia-calib"):
        path = cache_dir() / WIKIPEDIA
        if not path.is_file():
            raise FileNotFoundError(
                f"'{path}' does not exist: the Wikipedia articles come from the {WIKIPEDIA_SOURCE[0]} wheel's test "
                f"data; run `make llm` (or set CUTTREE_CACHE to the folder that holds {WIKIPEDIA})"
            )
        articles = wiki_articles(bz2.decompress(path.read_bytes()).decode("utf-8"))
        return "\n\n".join(articles[name == "wikipedia-calib" :: 2])
    if name.startswith("text:"):
        return _files(Path(name.removeprefix("text:")))
    raise ValueError(
        f"unknown text '{name}'; use wikipedia-eval, wikipedia-calib, python-docs, botchan or text:PATH "
        "(a .txt file or a folder of them)"
    )


def wiki_articles(dump: str) -> list[str]:
    """The plain text of every article of a MediaWiki XML dump, in its order, redirects left out."""
    pages = re.findall(r"<text[^>]*>(.*?)</text>", dump, flags=re.S)
    plain = [wiki_plain(html.unescape(body)) for body in pages if not body.lstrip().upper().startswith("#REDIRECT")]
    return [p for p in plain if p]


def wiki_plain(markup: str) -> str:
    r"""Wiki markup reduced to its prose: comments, references, tags, templates, tables, files and
    categories removed, links and headings as their text, bold and italics unmarked.

    >>> wiki_plain("'''Albedo''' is [[light|reflected light]]<ref>A.</ref>{{cite|x={{y}}}}.\n== History ==")
    'Albedo is reflected light.\nHistory'
    """
    t = re.sub(r"<!--.*?-->|<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", markup, flags=re.S)
    for pattern in (r"\{\{[^{}]*\}\}", r"\{\|(?:(?!\{\|).)*?\|\}", r"\[\[[^\[\]|]*:[^\[\]]*\]\]"):
        while True:  # innermost first: templates, tables and files nest
            t, n = re.subn(pattern, "", t, flags=re.S)
            if not n:
                break
    t = re.sub(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", t)  # [[target|text]] and [[text]]
    t = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", t)  # [url text]
    t = re.sub(r"<[^>]+>", "", t)
    t = re.sub(r"'{2,}", "", t)
    t = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", t, flags=re.M)
    t = re.sub(r"^[*#:;]+\s*", "", t, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", t).strip()


def _files(path: Path) -> str:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"text:{path}: no such file, or a folder with no .txt file; give a UTF-8 text file")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def _gutenberg_body(raw: str) -> str:
    """The book between Project Gutenberg's START and END lines (all of it if they are absent)."""
    start, end = raw.find("*** START OF"), raw.find("*** END OF")
    body = raw[raw.index("\n", start) + 1 : end if end > start else None] if start >= 0 else raw
    return body.strip()


def windows(tokenizer: Any, text: str, length: int = 512, count: int | None = None, skip: int = 0) -> torch.Tensor:
    """``count`` (default: all) non-overlapping windows of ``length`` token ids, after the first
    ``skip`` windows, as an int64 tensor (windows × length)."""
    if length < 2:
        raise ValueError(f"window length {length}: a window needs at least 2 tokens (one to predict from)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // length - skip
    if count is not None and count > n:
        raise ValueError(
            f"{count} windows of {length} tokens asked for, after {skip}; the text has {max(n, 0)}: "
            "ask for fewer or shorter windows, or give a longer text"
        )
    n = n if count is None else count
    if n <= 0:
        raise ValueError(f"the text has {len(ids)} tokens, not one window of {length} after {skip}; give a longer text")
    flat = torch.tensor(ids[skip * length : (skip + n) * length], dtype=torch.int64)
    return flat.view(n, length)


class TextWindows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Windows of token ids as a dataset of samples for fine-tuning and evaluating a causal
    language model: ``{"input_ids": window, "attention_mask": ones}`` (its labels are its own
    tokens, shifted by the model).

    >>> d = TextWindows(torch.arange(6).view(2, 3))
    >>> len(d), d[1]["input_ids"].tolist(), d.windows.shape
    (2, [3, 4, 5], torch.Size([2, 3]))
    """

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.windows[i]
        return {"input_ids": w, "attention_mask": torch.ones_like(w)}
