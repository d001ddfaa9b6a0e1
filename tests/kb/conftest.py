"""Helpers for KB tests: write article files into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def article_text(
    id_: str,
    questions: list[str],
    *,
    title: str | None = None,
    category: str = "general",
    lang: str = "en",
    body: str = "The answer.",
) -> str:
    qs = "\n".join(f"  - {q}" for q in questions)
    return (
        f"---\nid: {id_}\ntitle: {title or id_}\ncategory: {category}\nlang: {lang}\n"
        f"questions:\n{qs}\n---\n{body}\n"
    )


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    d = tmp_path / "kb"
    d.mkdir()
    return d


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p
