"""Learning from "did this help?": per article, the questions it helped or failed for.

A verdict counts for later queries that are the same question after normalisation or a
fuzzy match of it (rapidfuzz ``token_set_ratio`` on the stems), so "vpn broken" and
"VPN is broken!!" share their history.  The adjustment saturates: a few failures push an
article down clearly, but no amount of feedback turns a bad match into an answer on its
own.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process


@dataclass
class _Tally:
    helped: float = 0.0
    failed: float = 0.0


@dataclass
class FeedbackStore:
    """Verdict tallies keyed by (article id, normalised question)."""

    similarity: float = 80.0  # rapidfuzz score (0..100) for "the same question"
    weight: float = 0.2  # the largest score change feedback can make
    _tallies: dict[str, dict[str, _Tally]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, article_id: str, normalised_query: str, helped: bool) -> None:
        """Record one verdict."""
        if not normalised_query:
            return
        tally = self._tallies[article_id].setdefault(normalised_query, _Tally())
        if helped:
            tally.helped += 1
        else:
            tally.failed += 1

    def __len__(self) -> int:
        return sum(len(v) for v in self._tallies.values())

    def adjustment(self, article_id: str, normalised_query: str) -> float:
        """How much to add to ``article_id``'s score for this query (may be negative).

        Failures weigh 1.5× a success: showing a wrong answer again costs more than
        missing a right one.  Similar (not identical) questions count in proportion.
        """
        entries = self._tallies.get(article_id)
        if not entries or not normalised_query:
            return 0.0
        keys = list(entries)
        matches = process.extract(
            normalised_query, keys, scorer=fuzz.token_set_ratio,
            score_cutoff=self.similarity, limit=None,
        )
        net = 0.0
        for key, score, _ in matches:
            t = entries[key]
            net += (t.helped - 1.5 * t.failed) * (score / 100.0)
        return self.weight * math.tanh(net / 2.0)

    def articles(self) -> list[str]:
        """Ids of the articles with any feedback."""
        return [a for a, v in self._tallies.items() if v]
