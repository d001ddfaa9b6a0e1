"""Output for the admin CLI (`firstline kb search`, `kb check`, `kb gaps`); no typer here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from config.problems import Problem
from kb.gaps import GapCluster
from kb.service import KnowledgeBase


def search_lines(
    kb: KnowledgeBase, questions: Iterable[str], as_json: bool, lang: str | None = None
) -> Iterator[str]:
    """One JSON object (``--json``) or a readable block per non-empty question."""
    for raw in questions:
        question = raw.strip()
        if not question:
            continue
        result = kb.search(question, lang)
        if as_json:
            yield json.dumps(
                {
                    "query": question,
                    "decision": result.decision,
                    "results": [
                        {"id": r.article.id, "score": round(r.score, 4)} for r in result.results
                    ],
                },
                ensure_ascii=False,
            )
            continue
        yield f"{question}"
        category = f"  category: {result.category} ({result.category_score:.2f})" \
            if result.category else ""
        yield f"  decision: {result.decision}{category}"
        if not result.results:
            yield "  (no articles)"
        for n, r in enumerate(result.results, 1):
            yield f"  {n}. {r.score:.3f}  {r.article.id}  {r.article.title}"


def check_lines(problems: Iterable[Problem]) -> Iterator[str]:
    """One line per problem (``file:line [key]: message``) and a summary line."""
    items = sorted(problems, key=lambda p: (p.file, p.line or 0, p.key))
    for p in items:
        yield str(p)
    yield f"{len(items)} problem(s) found" if items else "OK: no problems found"


def gaps_lines(clusters: Iterable[GapCluster]) -> Iterator[str]:
    """A readable list of gap clusters, most frequent first."""
    any_cluster = False
    for c in clusters:
        any_cluster = True
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(c.reasons.items()))
        yield f"{c.count:4d}  {c.representative}  ({reasons})"
        for ex in c.examples[1:]:
            yield f"        ~ {ex}"
    if not any_cluster:
        yield "no gaps found"
