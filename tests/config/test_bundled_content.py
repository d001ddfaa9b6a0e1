"""The bundled default content: KB articles, categories and the sample customer directory.

Parsed with plain ``yaml`` on purpose: these tests check the files themselves, independent
of the KB loader.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rapidfuzz import fuzz

from config.categories import default_categories_path, load_categories

DEFAULTS = default_categories_path().parent
KB_DIR = DEFAULTS / "kb"
LANGS = ("en", "ru")
REQUIRED_FIELDS = ("id", "title", "category", "lang", "questions")
OPTIONAL_FIELDS = ("tags", "links")
MAX_BODY_CHARS = 1200
TIERS = {"free", "standard", "business", "enterprise"}
PLATFORMS = {"telegram", "slack", "console"}


@dataclass(frozen=True)
class Article:
    """One parsed KB file."""

    path: Path
    meta: dict[str, Any]
    body: str

    @property
    def rel(self) -> Path:
        """The path relative to the KB folder: ``<lang>/<category>/<name>.md``."""
        return self.path.relative_to(KB_DIR)


def parse(path: Path) -> Article:
    """Split a KB file into its YAML front matter and Markdown body."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path}: must start with a '---' line"
    end = text.find("\n---\n", 4)
    assert end > 0, f"{path}: the front matter is not closed with a '---' line"
    meta = yaml.safe_load(text[4 : end + 1])
    assert isinstance(meta, dict), f"{path}: the front matter must be a mapping"
    return Article(path, meta, text[end + 5 :].strip())


def normalise(question: str) -> str:
    """Lowercase, ё -> е, words only: what makes two phrasings "the same"."""
    return " ".join(re.findall(r"\w+", question.lower().replace("ё", "е")))


ARTICLES = [parse(p) for p in sorted(KB_DIR.rglob("*.md"))]


def category_ids() -> set[str]:
    """The ids of the bundled categories."""
    categories, problems = load_categories(default_categories_path())
    assert problems == []
    return {c.id for c in categories}


def test_enough_articles_in_each_language() -> None:
    assert len(ARTICLES) >= 36
    per_lang = Counter(a.meta.get("lang") for a in ARTICLES)
    for lang in LANGS:
        assert per_lang[lang] >= 18, per_lang


@pytest.mark.parametrize("article", ARTICLES, ids=lambda a: str(a.rel))
def test_front_matter(article: Article) -> None:
    meta = article.meta
    for name in REQUIRED_FIELDS:
        assert meta.get(name), f"{article.rel}: {name} is missing or empty"
    unknown = set(meta) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    assert not unknown, f"{article.rel}: unknown fields {unknown}"
    for name in ("id", "title", "category", "lang"):
        assert isinstance(meta[name], str), f"{article.rel}: {name} must be a string"
    assert meta["lang"] in LANGS
    # The folder layout and the id agree: kb/<lang>/<category>/<name>.md -> lang-category-name.
    lang, category, filename = article.rel.parts
    assert meta["lang"] == lang
    assert meta["category"] == category
    assert meta["id"] == f"{lang}-{category}-{Path(filename).stem}"
    for name in OPTIONAL_FIELDS:
        if name in meta:
            value = meta[name]
            assert isinstance(value, list), f"{article.rel}: {name} must be a list"
            assert all(isinstance(v, str) and v.strip() for v in value)
    for link in meta.get("links", []):
        assert link.startswith("https://"), link


@pytest.mark.parametrize("article", ARTICLES, ids=lambda a: str(a.rel))
def test_questions(article: Article) -> None:
    questions = article.meta["questions"]
    assert isinstance(questions, list)
    assert 6 <= len(questions) <= 12, f"{article.rel}: {len(questions)} questions"
    assert all(isinstance(q, str) and len(q.strip()) >= 5 for q in questions)
    normalised = [normalise(q) for q in questions]
    assert len(set(normalised)) == len(normalised), f"{article.rel}: repeated phrasing"
    if article.meta["lang"] == "ru":
        # Russian phrasings are in Russian (error messages and product names aside).
        assert sum(bool(re.search("[а-яё]", q.lower())) for q in questions) >= len(questions) - 3


@pytest.mark.parametrize("article", ARTICLES, ids=lambda a: str(a.rel))
def test_body(article: Article) -> None:
    assert article.body, f"{article.rel}: the body (the answer) is empty"
    assert len(article.body) <= MAX_BODY_CHARS, f"{article.rel}: {len(article.body)} chars"
    assert article.body.count("```") % 2 == 0, f"{article.rel}: unclosed code block"
    if article.meta["lang"] == "ru":
        assert re.search("[а-яё]", article.body)


def test_ids_unique() -> None:
    ids = Counter(a.meta["id"] for a in ARTICLES)
    assert [i for i, n in ids.items() if n > 1] == []


def test_categories_known_and_covered_in_both_languages() -> None:
    known = category_ids()
    used = {(a.meta["category"], a.meta["lang"]) for a in ARTICLES}
    assert {c for c, _ in used} <= known
    missing = {(c, lang) for c in known for lang in LANGS} - used
    assert missing == set()


def test_phrasings_are_distinct_across_articles() -> None:
    """The matcher must be able to tell articles apart: no (near-)identical phrasings."""
    by_lang: dict[str, list[tuple[str, str]]] = {lang: [] for lang in LANGS}
    for a in ARTICLES:
        by_lang[a.meta["lang"]].extend((a.meta["id"], normalise(q)) for q in a.meta["questions"])
    clashes = []
    for items in by_lang.values():
        for (id_a, q_a), (id_b, q_b) in itertools.combinations(items, 2):
            if id_a != id_b and fuzz.token_sort_ratio(q_a, q_b) >= 90:
                clashes.append((id_a, q_a, id_b, q_b))
    assert clashes == []


def test_customers_file() -> None:
    data = yaml.safe_load((DEFAULTS / "customers.yaml").read_text(encoding="utf-8"))
    assert data["default_tier"] in TIERS
    orgs = data["organisations"]
    assert {o["tier"] for o in orgs} == TIERS  # every tier has a sample
    assert len({o["id"] for o in orgs}) == len(orgs)
    seen: set[tuple[str, str]] = set()
    for org in orgs:
        assert org["name"].strip()
        for member in org["members"]:
            assert member["platform"] in PLATFORMS
            assert isinstance(member["user_id"], str) and member["user_id"]
            key = (member["platform"], member["user_id"])
            assert key not in seen, f"{key} belongs to two organisations"
            seen.add(key)
