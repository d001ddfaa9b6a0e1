"""The KB matcher: which article answers a question, and how sure we are.

Three signals, all built from the articles' own phrasings at index build (no model
download):

1. **A linear classifier** (multinomial logistic regression) over TF-IDF of stemmed word
   uni+bigrams and character 2–5-grams of the stems.  Trained from the phrasings (and
   titles) at build time; it learns which words tell two close articles apart, which a
   nearest-phrasing search cannot.  This carries most of the top-1 accuracy.
2. **Term statistics**: an inverted index over word features picks candidate phrasings
   (the cheap prefilter), scored by TF-IDF cosine over all features.
3. **rapidfuzz** re-ranks those candidates on the normalised text: typos, word order and
   short texts.

Per article: ``score = w_model * probability + (1 - w_model) * best phrasing similarity``.
The similarity part is absolute (how close is the nearest phrasing at all), the
probability is relative (which of the articles), so together they separate "clearly this
one" from "none of these".  Decision: **answer** when the best score and its margin over
the second clear their thresholds, **suggest** up to three when the best clears the
suggest threshold, else **none**.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz
from scipy import sparse  # type: ignore[import-untyped]

from kb.articles import Article
from kb.normalize import fix_layout, script_lang, tokens

Decision = Literal["answer", "suggest", "none"]
FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class MatchSettings:
    """Decision thresholds and model knobs (exposed in the app config as ``kb.*``).

    The thresholds were calibrated on a held-out part of Banking77's training set
    (``benchmarks/kb_banking77.py --calibrate``); scores are in 0..1.
    """

    answer_threshold: float = 0.66  # best score needed to answer with one article
    suggest_threshold: float = 0.48  # best score needed to offer suggestions at all
    answer_margin: float = 0.36  # best minus second needed to answer
    max_results: int = 3
    model_weight: float = 0.4  # share of the classifier probability in the score
    regularization: float = 20.0  # inverse L2 strength of the classifier
    max_iterations: int = 15  # L-BFGS iterations at index build
    # The classifier learns from at most this many phrasings per article (spread evenly
    # over its list); the similarity signal always uses all of them.  Keeps the build
    # time flat for large KBs at a small cost in accuracy.
    max_train_per_article: int = 40
    candidates: int = 64  # phrasings re-ranked with rapidfuzz per query
    feedback_weight: float = 0.2  # how far feedback can move a score (at saturation)
    feedback_similarity: float = 80.0  # rapidfuzz score for "the same question"


@dataclass(frozen=True)
class ScoredArticle:
    """An article and its score (0..1) for a query."""

    article: Article
    score: float


@dataclass(frozen=True)
class MatchResult:
    """The outcome of one search: the decision and the best articles, best first."""

    query: str
    decision: Decision
    results: tuple[ScoredArticle, ...]
    category: str | None = None
    category_score: float = 0.0

    @property
    def best(self) -> ScoredArticle | None:
        """The top result, if any."""
        return self.results[0] if self.results else None


def char_ngrams(stem: str) -> list[str]:
    """Character 2–5-grams of a stem padded with spaces (word-boundary aware)."""
    padded = f" {stem} "
    n = len(padded)
    return [padded[i : i + k] for k in (2, 3, 4, 5) for i in range(n - k + 1)]


_NGRAM_CACHE: dict[str, list[str]] = {}


def _features(toks: Sequence[str]) -> tuple[Counter[str], Counter[str]]:
    """Word-level (unigram + bigram) and character-level feature counts."""
    word: Counter[str] = Counter(toks)
    word.update(f"{a} {b}" for a, b in pairwise(toks))
    chars: Counter[str] = Counter()
    for tok in toks:
        grams = _NGRAM_CACHE.get(tok)
        if grams is None:
            grams = char_ngrams(tok)
            if len(_NGRAM_CACHE) < 500_000:
                _NGRAM_CACHE[tok] = grams
        chars.update(grams)
    return word, chars


@dataclass
class _Vectorizer:
    """TF-IDF (sublinear tf, smoothed idf) with a word block and a character block."""

    vocab: dict[str, int] = field(default_factory=dict)  # "w<feature>" / "c<feature>"
    idf: FloatArray = field(default_factory=lambda: np.zeros(0))
    is_word: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def fit(self, docs: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        """Learn the vocabulary and idf; return the L2-normalised document matrix."""
        vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        counts: list[int] = []
        for r, doc in enumerate(docs):
            word, chars = _features(doc)
            for prefix, counter in (("w", word), ("c", chars)):
                ids = [vocab.setdefault(prefix + key, len(vocab)) for key in counter]
                cols.extend(ids)
                counts.extend(counter.values())
                rows.extend([r] * len(ids))
        self.vocab = vocab
        n, f = len(docs), len(vocab)
        col = np.array(cols, dtype=np.int64)
        df = np.bincount(col, minlength=f)
        self.idf = np.log((1 + n) / (1 + df)) + 1.0
        self.is_word = np.array([k[0] == "w" for k in vocab], dtype=bool)
        vals = (1.0 + np.log(np.array(counts, dtype=np.float64))) * self.idf[col]
        row = np.array(rows, dtype=np.int64)
        # Each block is normalised on its own, then the concatenation (as in transform).
        block = self.is_word[col]
        sq = np.zeros((n, 2))
        np.add.at(sq, (row, block.astype(np.int64)), vals * vals)
        norms = np.sqrt(sq)
        vals = vals / np.where(norms[row, block.astype(np.int64)] > 0,
                               norms[row, block.astype(np.int64)], 1.0)
        total = np.zeros(n)
        np.add.at(total, row, vals * vals)
        vals = vals / np.sqrt(np.where(total > 0, total, 1.0))[row]
        return sparse.csr_matrix((vals, (row, col)), shape=(n, f))

    def transform(self, toks: Sequence[str]) -> tuple[IntArray, FloatArray]:
        return self._vector(*_features(toks))

    def _block(self, prefix: str, counts: Counter[str]) -> tuple[list[int], FloatArray]:
        ids: list[int] = []
        tfs: list[float] = []
        for key, count in counts.items():
            i = self.vocab.get(prefix + key)
            if i is not None:
                ids.append(i)
                tfs.append(1.0 + math.log(count))
        vals = np.array(tfs) * self.idf[ids] if ids else np.zeros(0)
        norm = float(np.sqrt(vals @ vals))
        return ids, vals / norm if norm else vals

    def _vector(self, word: Counter[str], chars: Counter[str]) -> tuple[IntArray, FloatArray]:
        wi, wv = self._block("w", word)
        ci, cv = self._block("c", chars)
        vals = np.concatenate([wv, cv])
        norm = float(np.sqrt(vals @ vals))
        return np.array(wi + ci, dtype=np.int64), vals / norm if norm else vals


def _train_softmax(
    x: sparse.csr_matrix, y: IntArray, n_classes: int, c: float, max_iter: int
) -> tuple[FloatArray, FloatArray]:
    """Multinomial logistic regression, L2-regularised, fitted with a small L-BFGS.

    Few iterations on purpose: early stopping regularises as well as more iterations
    with a tuned penalty, and keeps the index build well under a second per thousand
    phrasings.  float32 halves the memory traffic of the two sparse products per step.
    """
    n, f_all = x.shape
    # Only features the training rows use can get a non-zero weight.
    used = np.unique(x.indices)
    x = x[:, used].astype(np.float32)
    f = len(used)
    xt = x.T.tocsr()
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    size = f * n_classes

    def loss(theta: FloatArray) -> tuple[float, FloatArray]:
        w = theta[:size].reshape(f, n_classes)
        z = x @ w + theta[size:]
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        value = -c * float((onehot * logp).sum()) + 0.5 * float((w * w).sum())
        g = c * (np.exp(logp) - onehot)
        grad_w = xt @ g + w
        return value, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    theta = np.zeros(size + n_classes, dtype=np.float32)
    value, grad = loss(theta)
    hist: list[tuple[FloatArray, FloatArray, float]] = []
    for _ in range(max_iter):
        # Two-loop recursion: direction = -H·grad from the last few steps.
        q = grad.copy()
        alphas = []
        for s_k, y_k, rho in reversed(hist):
            a = rho * float(s_k @ q)
            alphas.append(a)
            q -= a * y_k
        if hist:
            s_k, y_k, _ = hist[-1]
            q *= float(s_k @ y_k) / float(y_k @ y_k)
        else:
            q /= max(float(np.sqrt(grad @ grad)), 1e-12)
        for (s_k, y_k, rho), a in zip(hist, reversed(alphas), strict=True):
            q += s_k * (a - rho * float(y_k @ q))
        step = 1.0
        slope = -float(grad @ q)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            hist.clear()
            q = grad / max(float(np.sqrt(grad @ grad)), 1e-12)
            slope = -float(grad @ q)
        for _ls in range(20):  # Armijo backtracking
            new_theta = theta - step * q
            new_value, new_grad = loss(new_theta)
            if new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s_new, y_new = new_theta - theta, new_grad - grad
        sy = float(s_new @ y_new)
        if sy > 1e-10:
            hist.append((s_new, y_new, 1.0 / sy))
            if len(hist) > 5:
                hist.pop(0)
        theta, value, grad = new_theta, new_value, new_grad
    w_all = np.zeros((f_all, n_classes), dtype=np.float32)
    w_all[used] = theta[:size].reshape(f, n_classes)
    return w_all, theta[size:]


class Matcher:
    """An immutable index over a set of articles; build once, query many times."""

    def __init__(self, articles: Iterable[Article], settings: MatchSettings | None = None) -> None:
        self.settings = settings or MatchSettings()
        self.articles: list[Article] = list(articles)
        self.index_of = {a.id: i for i, a in enumerate(self.articles)}
        self.langs = np.array([a.lang for a in self.articles])
        docs: list[list[str]] = []
        owner: list[int] = []
        texts: list[str] = []
        for i, art in enumerate(self.articles):
            # The title is one more phrasing: admins write it as the question's gist.
            for phrase in (*art.questions, art.title):
                toks = tokens(phrase)
                if toks:
                    docs.append(toks)
                    owner.append(i)
                    texts.append(" ".join(toks))
        self.vocabulary: set[str] = {t for d in docs for t in d}
        self.texts = texts
        self.owner = np.array(owner, dtype=np.int64)
        self.vectorizer = _Vectorizer()
        self.x = self.vectorizer.fit(docs)
        n_feat = len(self.vectorizer.vocab)
        self.xt = self.x.T.tocsr()  # the inverted index: feature -> phrasings
        n_classes = len(self.articles)
        if n_classes >= 2 and self.x.shape[0]:
            rows = self._training_rows()
            self.w, self.b = _train_softmax(
                self.x[rows], self.owner[rows], n_classes, self.settings.regularization,
                self.settings.max_iterations,
            )
        else:
            self.w, self.b = np.zeros((n_feat, n_classes)), np.zeros(n_classes)
        self.by_article: list[IntArray] = [
            np.flatnonzero(self.owner == i) for i in range(n_classes)
        ]

    def _training_rows(self) -> IntArray:
        cap = self.settings.max_train_per_article
        picked: list[IntArray] = []
        for i in range(len(self.articles)):
            own = np.flatnonzero(self.owner == i)
            if len(own) > cap:
                # Always keep the title (the last phrasing); spread the rest evenly.
                spread = np.linspace(0, len(own) - 2, cap - 1).astype(np.int64)
                own = np.unique(np.r_[own[spread], own[-1]])
            picked.append(own)
        return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)

    def normalize(self, query: str) -> list[str]:
        """The query's stems after undoing a wrong keyboard layout."""
        return tokens(fix_layout(query, self.vocabulary))

    def score(self, query: str, lang: str | None = None) -> tuple[list[str], FloatArray]:
        """Normalised tokens and a 0..1 score per article (before feedback)."""
        n = len(self.articles)
        fixed = fix_layout(query, self.vocabulary)
        toks = tokens(fixed)
        # Without a language hint the query's own script (after the layout fix) picks it.
        lang = lang or script_lang(fixed)
        if not toks or not n:
            return toks, np.zeros(n)
        idx, val = self.vectorizer.transform(toks)
        if not len(idx):
            return toks, np.zeros(n)
        allowed = np.ones(n, dtype=bool)
        if lang is not None and (self.langs == lang).any():
            allowed = self.langs == lang
        z = val @ self.w[idx] + self.b
        z = np.where(allowed, z, -np.inf)
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        sim = self._similarity(toks, idx, val, prob)
        s = self.settings.model_weight
        return toks, np.where(allowed, s * prob + (1 - s) * sim, 0.0)

    def _similarity(
        self, toks: list[str], idx: IntArray, val: FloatArray, prob: FloatArray
    ) -> FloatArray:
        """Per article: the best of its candidate phrasings (cosine and rapidfuzz)."""
        n_ph = self.x.shape[0]
        m = self.settings.candidates
        word = self.vectorizer.is_word[idx]
        starts = self.xt.indptr[idx[word]]
        ends = self.xt.indptr[idx[word] + 1]
        if len(starts):
            post = np.concatenate([self.xt.indices[s:e] for s, e in zip(starts, ends, strict=True)])
            wts = np.concatenate(
                [self.xt.data[s:e] * v for s, e, v in zip(starts, ends, val[word], strict=True)]
            )
            pre = np.bincount(post, weights=wts, minlength=n_ph)
            hits = np.flatnonzero(pre)
            if len(hits) > m:
                hits = hits[np.argpartition(-pre[hits], m)[:m]]
        else:
            hits = np.zeros(0, dtype=np.int64)
        # The classifier's favourites are always re-ranked too, so a query whose words
        # are all misspelt still gets a rapidfuzz look at the right phrasings.
        top = np.argpartition(-prob, min(3, len(prob) - 1))[:3]
        extra = [self.by_article[int(a)][: max(8, m // 4)] for a in top]
        cand = np.unique(np.concatenate([hits, *extra]))
        q = np.zeros(self.x.shape[1])
        q[idx] = val
        cos = self.x[cand] @ q
        text = " ".join(toks)
        fz = np.array([fuzz.token_sort_ratio(text, self.texts[c]) for c in cand]) / 100.0
        per_ph = 0.5 * cos + 0.5 * fz
        sim = np.zeros(len(self.articles))
        np.maximum.at(sim, self.owner[cand], per_ph)
        return sim

    def decide(self, ranked: Sequence[tuple[int, float]]) -> Decision:
        """answer / suggest / none from the sorted (article, score) list."""
        st = self.settings
        if not ranked or ranked[0][1] < st.suggest_threshold:
            return "none"
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        if ranked[0][1] >= st.answer_threshold and ranked[0][1] - second >= st.answer_margin:
            return "answer"
        return "suggest"

    def rank(
        self, scores: FloatArray, exclude: Collection[str] = ()
    ) -> list[tuple[int, float]]:
        """Article indices with scores, best first, excluded ids dropped."""
        order = np.argsort(-scores, kind="stable")
        out: list[tuple[int, float]] = []
        for i in order[: self.settings.max_results + len(exclude) + 1]:
            if self.articles[int(i)].id in exclude or scores[i] <= 0:
                continue
            out.append((int(i), float(scores[i])))
        return out

    def match(
        self, query: str, lang: str | None = None, exclude: Collection[str] = ()
    ) -> MatchResult:
        """Score, rank and decide (no feedback; see :class:`kb.service.KnowledgeBase`)."""
        _, scores = self.score(query, lang)
        ranked = self.rank(scores, exclude)
        return MatchResult(
            query=query,
            decision=self.decide(ranked),
            results=tuple(
                ScoredArticle(self.articles[i], round(s, 4))
                for i, s in ranked[: self.settings.max_results]
            ),
        )
