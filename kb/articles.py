"""KB articles: Markdown files with YAML front matter, loaded and validated.

A file looks like::

    ---
    id: vpn-reset
    title: VPN does not connect
    category: network
    lang: en
    questions:
      - vpn does not connect
      - cannot reach the office network from home
    tags: [vpn]
    links:
      - https://example.com/vpn
      - {title: VPN guide, url: https://example.com/guide}
    ---
    The answer, in Markdown.

Every problem is reported with its file and line; a broken file never stops the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.problems import Problem
from config.yamlfile import LocatedYaml, parse_yaml
from kb.normalize import tokens

LANGS = ("ru", "en")
REQUIRED = ("id", "title", "category", "lang", "questions")
OPTIONAL = ("tags", "links")
_URL = re.compile(r"^(https?://|mailto:|tg://)\S+$", re.IGNORECASE)
_FENCE = "---"


@dataclass(frozen=True)
class Link:
    """A link under an answer; ``title`` is ``None`` for a bare URL."""

    url: str
    title: str | None = None


@dataclass(frozen=True)
class Article:
    """One KB answer with the phrasings it answers."""

    id: str
    title: str
    category: str
    lang: str
    questions: tuple[str, ...]
    body: str
    tags: tuple[str, ...]
    links: tuple[str, ...]  # the URLs, in file order
    path: str
    line: int  # the line of the front matter's ``id`` key (1 when unknown)
    link_items: tuple[Link, ...] = field(default=())  # the same links with their titles


def article_files(kb_dir: Path) -> list[Path]:
    """All ``*.md`` files under ``kb_dir`` (recursive, sorted, hidden ones skipped)."""
    if not kb_dir.is_dir():
        return []
    return sorted(
        p
        for p in kb_dir.rglob("*.md")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(kb_dir).parts)
    )


def split_front_matter(text: str) -> tuple[str, str, int] | None:
    """``(yaml_text, body, body_first_line)``, or ``None`` without front matter.

    The front matter must start on the first line with ``---`` and end with a ``---``
    line; the YAML's first line is line 2 of the file.
    """
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != _FENCE:
        return None
    for i in range(1, len(lines)):
        if lines[i].rstrip() in (_FENCE, "..."):
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :]), i + 2
    return None


def _read(path: Path, name: str) -> tuple[str | None, list[Problem]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Problem(name, None, "", f"cannot read: {exc.strerror or exc}")]
    if b"\x00" in raw[:8192]:
        return None, [Problem(name, None, "", "binary file, expected Markdown text")]
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        return None, [Problem(name, None, "", f"not UTF-8 text: {exc.reason}")]


def _str_list(doc: LocatedYaml, key: str, value: Any, problems: list[Problem]) -> list[str]:
    if not isinstance(value, list):
        problems.append(doc.problem((key,), f"'{key}' must be a list of strings"))
        return []
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            problems.append(doc.problem((key, i), "must be a string"))
        elif not str(item).strip():
            problems.append(doc.problem((key, i), "must not be empty"))
        else:
            out.append(str(item).strip())
    return out


def _links(doc: LocatedYaml, value: Any, problems: list[Problem]) -> list[Link]:
    if not isinstance(value, list):
        problems.append(doc.problem(("links",), "'links' must be a list"))
        return []
    out: list[Link] = []
    for i, item in enumerate(value):
        title: str | None = None
        if isinstance(item, dict):
            url, title = item.get("url"), item.get("title")
            extra = set(item) - {"url", "title"}
            if extra:
                problems.append(doc.problem(("links", i), f"unknown key(s): {sorted(extra)}"))
            if title is not None and (not isinstance(title, str) or not title.strip()):
                problems.append(doc.problem(("links", i, "title"), "must be a non-empty string"))
                title = None
        else:
            url = item
        if not isinstance(url, str) or not _URL.match(url.strip()):
            problems.append(doc.problem(("links", i), f"not a URL: {url!r}"))
            continue
        out.append(Link(url.strip(), title.strip() if isinstance(title, str) else None))
    return out


def parse_article(text: str, name: str) -> tuple[Article | None, list[Problem]]:
    """Parse one article file's text; ``None`` when it cannot be served."""
    split = split_front_matter(text)
    if split is None:
        return None, [
            Problem(name, 1, "", "missing front matter: the file must start with a '---' line, "
                    "the YAML fields, and a closing '---' line")
        ]
    yaml_text, body, _ = split
    doc, problems = parse_yaml(yaml_text, name, line_offset=1)
    if doc is None:
        return None, problems
    data = doc.data
    if not isinstance(data, dict):
        return None, [Problem(name, 2, "", "front matter must be a mapping of fields")]
    fatal = False
    for key in sorted(set(map(str, data)) - set(REQUIRED) - set(OPTIONAL)):
        problems.append(doc.problem((key,), f"unknown field '{key}'"))
    values: dict[str, str] = {}
    for key in ("id", "title", "category", "lang"):
        value = data.get(key)
        if value is None:
            problems.append(Problem(name, doc.line() or 2, key, f"missing field '{key}'"))
            fatal = True
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(doc.problem((key,), f"'{key}' must be a string"))
            fatal = True
        elif not str(value).strip():
            problems.append(doc.problem((key,), f"'{key}' must not be empty"))
            fatal = True
        else:
            values[key] = str(value).strip()
    if "lang" in values and values["lang"] not in LANGS:
        problems.append(
            doc.problem(("lang",), f"unknown lang {values['lang']!r}, expected one of {LANGS}")
        )
        fatal = True
    questions: list[str] = []
    if data.get("questions") is None:
        problems.append(Problem(name, doc.line() or 2, "questions", "missing field 'questions'"))
        fatal = True
    else:
        questions = _str_list(doc, "questions", data["questions"], problems)
        if not questions:
            problems.append(doc.problem(("questions",), "'questions' needs at least one phrasing"))
            fatal = True
    tags = _str_list(doc, "tags", data["tags"], problems) if data.get("tags") is not None else []
    links = _links(doc, data["links"], problems) if data.get("links") is not None else []
    if not body.strip():
        problems.append(Problem(name, split[2] - 1, "body", "empty body: the answer is missing"))
        fatal = True
    if fatal:
        return None, problems
    article = Article(
        id=values["id"],
        title=values["title"],
        category=values["category"],
        lang=values["lang"],
        questions=tuple(dict.fromkeys(questions)),
        body=body.strip(),
        tags=tuple(tags),
        links=tuple(link.url for link in links),
        path=name,
        line=doc.line("id") or 2,
        link_items=tuple(links),
    )
    return article, problems


def phrasing_key(text: str) -> str:
    """The normalised form two phrasings collide on."""
    return " ".join(tokens(text, keep_stop_words=True))


def validate_articles(
    articles: Iterable[Article], categories: set[str] | None = None
) -> tuple[list[Article], list[Problem]]:
    """Cross-file checks: duplicate ids (later file dropped), categories, collisions."""
    problems: list[Problem] = []
    kept: dict[str, Article] = {}
    for art in articles:
        first = kept.get(art.id)
        if first is not None:
            problems.append(
                Problem(art.path, art.line, "id",
                        f"duplicate id {art.id!r}, already used in {first.path}:{first.line}")
            )
            continue
        kept[art.id] = art
        if categories is not None and art.category not in categories:
            known = ", ".join(sorted(categories)) or "none"
            problems.append(
                Problem(art.path, art.line, "category",
                        f"unknown category {art.category!r} (known: {known})")
            )
    seen: dict[tuple[str, str], Article] = {}
    for art in kept.values():
        for i, question in enumerate(art.questions):
            key = phrasing_key(question)
            if not key:
                continue
            other = seen.setdefault((art.lang, key), art)
            if other.id != art.id:
                problems.append(
                    Problem(art.path, art.line, f"questions.{i}",
                            f"phrasing {question!r} collides with article {other.id!r} "
                            f"({other.path}): the matcher cannot tell them apart")
                )
    return list(kept.values()), problems


def load_articles(
    kb_dir: Path, categories: set[str] | None = None
) -> tuple[list[Article], list[Problem]]:
    """Load every article under ``kb_dir``; return the valid ones and all problems.

    ``categories`` is the set of known category ids; ``None`` skips that check.
    """
    problems: list[Problem] = []
    if not kb_dir.is_dir():
        return [], [Problem(str(kb_dir), None, "", "KB folder not found")]
    parsed: list[Article] = []
    for path in article_files(kb_dir):
        name = str(path)
        text, read_problems = _read(path, name)
        problems += read_problems
        if text is None:
            continue
        article, file_problems = parse_article(text, name)
        problems += file_problems
        if article is not None:
            parsed.append(article)
    articles, cross = validate_articles(parsed, categories)
    problems += cross
    return articles, sorted(problems, key=lambda p: (p.file, p.line or 0, p.key))
