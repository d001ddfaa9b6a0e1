"""KB gaps: frequent questions nobody answered well, grouped by similarity.

Input rows are ``(question, reason)`` with reason ``no_match`` (the matcher said none) or
``not_helped`` (an article was shown and the user said it did not help).  Similar
questions (rapidfuzz ``token_set_ratio`` over normalised stems) fall into one cluster; the
clusters asked most often come first — candidates for new articles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from kb.normalize import tokens


@dataclass(frozen=True)
class GapCluster:
    """A group of similar unanswered questions."""

    representative: str  # the most frequent original wording
    count: int
    examples: tuple[str, ...]  # distinct wordings, most frequent first (at most 5)
    reasons: dict[str, int]  # reason -> count


def find_gaps(
    questions: Sequence[tuple[str, str]], min_count: int = 2, similarity: float = 75.0
) -> list[GapCluster]:
    """Cluster ``(question, reason)`` rows; clusters of at least ``min_count``, biggest first."""
    by_key: dict[str, list[tuple[str, str]]] = {}
    for text, reason in questions:
        key = " ".join(sorted(set(tokens(text)))) or text.strip().lower()
        if key:
            by_key.setdefault(key, []).append((text.strip(), reason))
    # Greedy: the most frequent normalised question seeds a cluster, similar ones join it.
    keys = sorted(by_key, key=lambda k: (-len(by_key[k]), k))
    seeds: list[str] = []
    members: dict[str, list[str]] = {}
    for key in keys:
        best = process.extractOne(
            key, seeds, scorer=fuzz.token_set_ratio, score_cutoff=similarity
        ) if seeds else None
        if best is None:
            seeds.append(key)
            members[key] = [key]
        else:
            members[best[0]].append(key)
    clusters: list[GapCluster] = []
    for seed in seeds:
        rows = [row for key in members[seed] for row in by_key[key]]
        if len(rows) < min_count:
            continue
        wordings = Counter(text for text, _ in rows)
        reasons = Counter(reason for _, reason in rows)
        ranked = [w for w, _ in wordings.most_common()]
        clusters.append(
            GapCluster(
                representative=ranked[0],
                count=len(rows),
                examples=tuple(ranked[:5]),
                reasons=dict(reasons),
            )
        )
    clusters.sort(key=lambda c: (-c.count, c.representative))
    return clusters
