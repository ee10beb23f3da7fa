"""The repository explains itself: it cites only its own documents, and every ``docs/method.md §N``
citation names a section that exists."""

from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTS = (".py", ".md", ".yaml", ".yml", ".txt", ".sh", ".toml", ".cfg")
SKIP_DIRS = {"__pycache__", "node_modules"}
# Developer notes that never ship with the repository; a citation of one is a dead reference.
PRIVATE = re.compile(r"\.\./shared|\b(?:METHOD|STACK|DATA|STYLE)\.md\b|\b(?:METHOD|STACK|DATA) §")
CITATION = re.compile(r"docs/method\.md §(\d+(?:\.\d+)?)(?:–§(\d+(?:\.\d+)?))?")


def _files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(EXTS):
                yield os.path.join(root, name)


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def test_no_file_cites_the_private_developer_notes():
    me = os.path.abspath(__file__)
    hits = [f"{os.path.relpath(p, REPO)}:{i}: {line.strip()[:100]}"
            for p in _files() if p != me
            for i, line in enumerate(_read(p).splitlines(), 1) if PRIVATE.search(line)]
    assert not hits, "citations of documents the repository does not ship:\n" + "\n".join(hits)


def test_every_method_citation_names_an_existing_section():
    doc = _read(os.path.join(REPO, "docs", "method.md"))
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", doc, flags=re.M))
    assert {"1", "1.1", "2", "3", "4", "5", "6", "7"} <= sections
    missing = sorted({f"{os.path.relpath(p, REPO)}: §{s}"
                      for p in _files() for m in CITATION.finditer(_read(p)) for s in m.groups() if s
                      and s not in sections})
    assert not missing, "docs/method.md has no such section:\n" + "\n".join(missing)
