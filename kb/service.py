"""The knowledge base as the bot uses it: load, search, learn, reload on change."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz

from config.problems import Problem
from kb.articles import Article, article_files, load_articles
from kb.feedback import FeedbackStore
from kb.matcher import Matcher, MatchResult, MatchSettings, ScoredArticle
from kb.normalize import script_lang, tokens

CategoryKeywords = dict[str, dict[str, tuple[str, ...]]]  # category -> lang -> words
_Signature = tuple[tuple[str, int, int], ...]


class KnowledgeBase:
    """Articles from a folder, a matcher over them, and feedback-aware search.

    ``problems`` lists everything wrong with the files (for ``firstline kb check`` and
    the logs); broken files are skipped, the valid articles are served.
    """

    def __init__(
        self,
        kb_dir: Path,
        *,
        categories: set[str] | None = None,
        category_keywords: CategoryKeywords | None = None,
        settings: MatchSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 2.0,
    ) -> None:
        self.kb_dir = kb_dir
        self.categories = categories
        self.settings = settings or MatchSettings()
        self.clock = clock
        self.check_interval = check_interval
        self.feedback = FeedbackStore(
            similarity=self.settings.feedback_similarity, weight=self.settings.feedback_weight
        )
        self._keywords = self._prepare_keywords(category_keywords or {})
        self.problems: list[Problem] = []
        self.articles: dict[str, Article] = {}
        self._matcher = Matcher([], self.settings)
        self._signature: _Signature = ()
        self._checked_at = float("-inf")
        self._load()

    @classmethod
    def from_articles(
        cls,
        articles: Iterable[Article],
        *,
        category_keywords: CategoryKeywords | None = None,
        settings: MatchSettings | None = None,
    ) -> KnowledgeBase:
        """A KB over in-memory articles (benchmarks, tests); never reloads."""
        kb = cls.__new__(cls)
        kb.kb_dir = Path()
        kb.categories = None
        kb.settings = settings or MatchSettings()
        kb.clock = time.monotonic
        kb.check_interval = float("inf")
        kb.feedback = FeedbackStore(
            similarity=kb.settings.feedback_similarity, weight=kb.settings.feedback_weight
        )
        kb._keywords = kb._prepare_keywords(category_keywords or {})
        kb.problems = []
        kb._install(list(articles))
        kb._signature = ()
        kb._checked_at = float("inf")
        return kb

    # -- loading ------------------------------------------------------------------------

    def _signature_now(self) -> _Signature:
        out: list[tuple[str, int, int]] = []
        for path in article_files(self.kb_dir):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _install(self, articles: list[Article]) -> None:
        self.articles = {a.id: a for a in articles}
        self._matcher = Matcher(articles, self.settings)

    def _load(self) -> None:
        self._signature = self._signature_now()
        self._checked_at = self.clock()
        articles, problems = load_articles(self.kb_dir, self.categories)
        # An article whose file broke in an edit keeps being served in its last good
        # version until the file is fixed (or removed): a typo must not unpublish it.
        broken = {p.file for p in problems if p.file not in {a.path for a in articles}}
        present = {s[0] for s in self._signature}
        ids = {a.id for a in articles}
        for old in self.articles.values():
            if old.path in broken and old.path in present and old.id not in ids:
                articles.append(old)
                ids.add(old.id)
        self.problems = problems
        self._install(articles)

    def reload_if_changed(self) -> bool:
        """Rebuild when an article file was added, changed or removed.

        Cheap to call on every message: the tree is stat-ed at most every
        ``check_interval`` seconds of ``clock``.  Returns whether it rebuilt.
        """
        now = self.clock()
        if now - self._checked_at < self.check_interval:
            return False
        self._checked_at = now
        if self._signature_now() == self._signature:
            return False
        self._load()
        return True

    # -- queries ------------------------------------------------------------------------

    def get(self, article_id: str) -> Article | None:
        """The article with this id, if loaded."""
        return self.articles.get(article_id)

    def search(
        self, query: str, lang: str | None = None, *, exclude: Collection[str] = ()
    ) -> MatchResult:
        """Find articles for ``query``; ``lang`` prefers that language's articles.

        ``exclude`` drops articles already shown.  Feedback recorded for similar
        questions moves scores up or down before the decision.
        """
        m = self._matcher
        scored = m.score_details(query, lang)
        toks, scores, runner_up = scored.toks, scored.scores, scored.runner_up
        if len(self.feedback) and toks:
            key = " ".join(toks)
            for art_id in self.feedback.articles():
                i = m.index_of.get(art_id)
                if i is not None and scores[i] > 0:
                    delta = self.feedback.adjustment(art_id, key)
                    scores[i] = float(np.clip(scores[i] + delta, 1e-6, 1.0))
                    # The runners-up move with their feedback too.
                    runner_up[i] = float(np.clip(runner_up[i] + delta, 1e-6, 1.0))
        ranked = m.rank(scores, exclude, runner_up)
        top = ranked[: self.settings.max_results]
        results = tuple(ScoredArticle(m.articles[i], round(s, 4)) for i, s in top)
        category, cat_score = self._category(toks, results, lang, scored.vectors)
        decision = m.decide(ranked, scored.vectors,
                            float(scored.closeness[ranked[0][0]]) if ranked else 0.0)
        return MatchResult(query, decision, results, category, cat_score)

    def detect_category(self, query: str, lang: str | None = None) -> tuple[str | None, float]:
        """The support category of free text (for the checklist) and a 0..1 confidence."""
        result = self.search(query, lang)
        return result.category, result.category_score

    def record_feedback(self, article_id: str, query: str, helped: bool) -> None:
        """Learn from a verdict (in memory; the caller persists it and replays at start)."""
        self.feedback.add(article_id, " ".join(self._matcher.normalize(query)), helped)

    def load_feedback(self, rows: Iterable[tuple[str, str, bool]]) -> None:
        """Replay stored ``(article_id, query, helped)`` verdicts."""
        for article_id, query, helped in rows:
            self.record_feedback(article_id, query, helped)

    # -- categories ---------------------------------------------------------------------

    @staticmethod
    def _prepare_keywords(raw: CategoryKeywords) -> dict[str, list[tuple[str, list[str]]]]:
        out: dict[str, list[tuple[str, list[str]]]] = {}
        for cat, by_lang in raw.items():
            for lang, words in by_lang.items():
                for word in words:
                    stems = tokens(word, keep_stop_words=True)
                    if stems:
                        out.setdefault(cat, []).append((lang, stems))
        return out

    def _category(
        self, toks: list[str], results: tuple[ScoredArticle, ...], lang: str | None,
        vectors: bool = False,
    ) -> tuple[str | None, float]:
        st = self.settings
        shown = st.vector_suggest_threshold if vectors else st.suggest_threshold
        scores: dict[str, float] = {}
        # Evidence 1: the categories of articles that match well enough to be shown.
        for r in results:
            if r.score < shown:
                continue
            cat = r.article.category
            scores[cat] = 1 - (1 - scores.get(cat, 0.0)) * (1 - r.score)
        # Evidence 2: the category's keywords, fuzzily (typos, word forms beyond stems).
        query_lang = lang or script_lang(" ".join(toks))
        present = set(toks)
        for cat, keywords in self._keywords.items():
            hits = 0
            for kw_lang, stems in keywords:
                if query_lang is not None and kw_lang != query_lang:
                    continue
                if all(
                    s in present
                    or (len(s) >= 4 and any(fuzz.ratio(s, t) >= 80 for t in present))
                    for s in stems
                ):
                    hits += 1
            if hits:
                kw = min(0.9, 0.5 + 0.2 * (hits - 1))
                scores[cat] = 1 - (1 - scores.get(cat, 0.0)) * (1 - kw)
        if not scores:
            return None, 0.0
        best = max(scores, key=lambda c: scores[c])
        return best, round(scores[best], 4)
