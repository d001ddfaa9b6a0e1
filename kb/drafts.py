"""Approved L2 answers become KB article files in the format the loader reads."""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def _slug(text: str) -> str:
    words = re.findall(r"[a-zа-я0-9]+", text.lower())
    return "-".join(words[:6]) or "article"


def write_article(
    kb_dir: Path,
    *,
    draft_id: int,
    question: str,
    answer: str,
    category: str,
    lang: str,
    title: str | None = None,
) -> Path:
    """Write ``kb_dir/<lang>/<category>/draft-<id>-<slug>.md`` and return its path.

    The user's question becomes the first phrasing; admins add more by editing the file.
    """
    first_line = question.strip().splitlines()[0] if question.strip() else "Question"
    article_id = f"{lang}-{category}-draft-{draft_id}"
    front = {
        "id": article_id,
        "title": (title or first_line)[:120],
        "category": category,
        "lang": lang,
        "questions": [first_line[:300]],
        "tags": ["from-l2"],
    }
    folder = kb_dir / lang / category
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"draft-{draft_id}-{_slug(first_line)}.md"
    header = yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip()
    path.write_text(f"---\n{header}\n---\n{answer.strip()}\n", encoding="utf-8")
    return path
