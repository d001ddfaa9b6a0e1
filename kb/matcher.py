"""The KB matcher: which article answers a question, and how sure we are.

Four signals, built from the articles' own phrasings at index build (no model download):

1. **A linear classifier** (multinomial logistic regression) over TF-IDF of stemmed
   content words (single, and in unordered pairs up to five words apart), character
   2–5-grams of the stems, and uni+bigrams with the stop words kept.  Trained from the
   phrasings (and titles) at build time; it learns which words tell two close articles
   apart, which a nearest-phrasing search cannot.
   This carries most of the top-1 accuracy.
2. **Term statistics**: an inverted index over content-word features picks candidate
   phrasings (the cheap prefilter, rarest words first, on a fixed postings budget), scored
   by TF-IDF cosine over the word features.
3. **rapidfuzz** re-ranks those candidates on the normalised text: typos, word order and
   short texts.
4. **Word meaning** (English only, ``vectors`` on): the bundled static word vectors
   (:mod:`kb.vectors`) give every English phrasing and query a meaning vector.  It is a
   dense block of the classifier's features, and the classifier's best eight articles get
   a logit bonus for the cosine of their nearest phrasing: "refused" finds "declined".
   Queries scored so have thresholds of their own (``vector_*``).  A query word the
   articles never use stands in for the articles' word nearest to it in meaning
   ("deactivate" → "terminate") when the two are close enough, and the "none" decision
   also looks at how near in meaning the best article's nearest phrasing is.

Per article: ``score = w_model * probability + (1 - w_model) * best phrasing similarity``.
The similarity part is absolute (how close is the nearest phrasing at all), the
probability is relative (which of the articles), so together they separate "clearly this
one" from "none of these".  Decision: **answer** when the best score and its margin over
the second clear their thresholds, **suggest** up to three when the best clears the
suggest threshold, else **none**.

Cost: a query is a few dozen numpy calls over the query's own features and postings (no
Python loop over phrasings), so its time barely grows with the KB; the build is sparse
products and one small L-BFGS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process
from scipy import sparse  # type: ignore[import-untyped]

from kb.articles import Article
from kb.normalize import STOP_WORDS, analyse, fix_layout, script_lang, stem, words
from kb.vectors import WordVectors, bundled

Decision = Literal["answer", "suggest", "none"]
FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class MatchSettings:
    """Decision thresholds and model knobs (exposed in the app config as ``kb.*``).

    The thresholds were calibrated on a held-out part of Banking77's training set
    (``benchmarks/kb_banking77.py --calibrate``); scores are in 0..1.
    """

    answer_threshold: float = 0.50  # best score needed to answer with one article
    suggest_threshold: float = 0.465  # best score needed to offer suggestions at all
    answer_margin: float = 0.46  # best minus second needed to answer
    max_results: int = 3
    model_weight: float = 0.6  # share of the classifier probability in the score
    # The best article is the one with the best score; the places after it go by a mix
    # with this share of the probability (the classifier knows the runners-up better than
    # the nearest phrasing does: top-3 +0.004 on held-out Banking77 train, 6 seeds).
    runner_up_model_weight: float = 0.8
    regularization: float = 20.0  # inverse L2 strength of the classifier
    max_iterations: int = 15  # L-BFGS iterations at index build
    # The classifier learns from at most this many phrasings per article (spread evenly
    # over its list); the similarity signal always uses all of them.  Keeps the build
    # time flat for large KBs at a small cost in accuracy.
    max_train_per_article: int = 40
    # A word pair or character gram gets a classifier weight only if this many training
    # phrasings have it (single words always do): one-off pairs and grams memorise a
    # phrasing, cost build time and add nothing.
    min_feature_rows: int = 2
    candidates: int = 24  # best prefilter phrasings re-ranked with rapidfuzz per query
    prefilter_postings: int = 4000  # postings the prefilter reads per query (rarest first)
    # The bundled English word vectors (:mod:`kb.vectors`): a dense block of the
    # classifier and a logit bonus for the article with the nearest phrasing in meaning.
    # ``False`` (config ``kb.vectors``) is the bag-of-words matcher alone.
    vectors: bool = True
    vector_scale: float = 1.0  # the dense block's scale against the unit tf-idf rows
    vector_bonus: float = 4.0  # logit bonus per unit of the nearest phrasing's cosine
    # Scores of queries scored with the vectors run higher (the dense block sharpens the
    # probabilities), so they have thresholds of their own, calibrated the same way.
    vector_answer_threshold: float = 0.76
    vector_suggest_threshold: float = 0.68
    vector_answer_margin: float = 0.50
    # A query word no article uses is replaced by the articles' word nearest to it in
    # meaning if their cosine reaches this (1 or more: never).
    vector_synonym_threshold: float = 0.55
    # "none" compares (score + w × cosine of the best article's nearest phrasing) / (1 + w)
    # with ``vector_suggest_threshold``: out-of-scope questions are far in meaning too.
    vector_closeness_weight: float = 0.5
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


Analysed = tuple[list[str], list[bool]]  # stems, and whether each is a content word


def _counts(rows: IntArray, cols: IntArray, n_rows: int, n_cols: int) -> sparse.csr_matrix:
    """A CSR count matrix from (row, col) pairs, duplicates summed."""
    data = np.ones(len(rows), dtype=np.float32)
    m = sparse.csr_matrix((data, (rows, cols)), shape=(n_rows, n_cols), dtype=np.float32)
    m.sum_duplicates()
    return m


def _pairs(tok: IntArray, doc: IntArray, n_tok: int) -> tuple[IntArray, IntArray]:
    """Bigram keys (``a * n_tok + b``) of consecutive tokens of the same document."""
    same = doc[:-1] == doc[1:]
    return tok[:-1][same] * n_tok + tok[1:][same], doc[:-1][same]


PAIR_WINDOW = 5  # content words this far apart (or closer) make an unordered pair


def _skip_pairs(tok: IntArray, doc: IntArray, n_tok: int) -> tuple[IntArray, IntArray]:
    """Unordered pair keys (``min * n_tok + max``) of tokens of the same document at most
    :data:`PAIR_WINDOW` apart: "fee … transfer" and "transfer fee" are one feature."""
    keys: list[IntArray] = []
    docs: list[IntArray] = []
    for d in range(1, PAIR_WINDOW + 1):
        same = doc[:-d] == doc[d:]
        a, b = tok[:-d][same], tok[d:][same]
        keys.append(np.minimum(a, b) * n_tok + np.maximum(a, b))
        docs.append(doc[:-d][same])
    return np.concatenate(keys), np.concatenate(docs)


class _Vectorizer:
    """TF-IDF (sublinear tf, smoothed idf) in four blocks, each L2-normalised:

    * ``w``: content stems, single and in unordered pairs up to :data:`PAIR_WINDOW`
      words apart (word order varies more than the words: "fee for a transfer");
    * ``c``: character 2–5-grams of the content stems (typos, word forms);
    * ``s``: all stems with the stop words kept, unigrams and bigrams ("how do I" and
      "why did my" tell close intents apart);
    * ``u``: content stems, single (classifier only).  A block of its own gives single
      words more weight against the pairs and grams: +0.007 top-1 on held-out Banking77
      train.

    Fitting is vectorised: documents become token-id arrays once, the blocks are sparse
    products and index arithmetic over them, not per-feature Python loops.
    """

    def __init__(self, docs: Sequence[Analysed], multiplicity: IntArray) -> None:
        tok_id: dict[str, int] = {}
        flat_tok: list[int] = []
        flat_doc: list[int] = []
        flat_content: list[bool] = []
        for r, (stems, content) in enumerate(docs):
            flat_tok.extend(tok_id.setdefault(t, len(tok_id)) for t in stems)
            flat_doc.extend([r] * len(stems))
            flat_content.extend(content)
        self.tok_id = tok_id
        n_tok = self.n_tok = len(tok_id)
        n_docs = len(docs)
        tok = np.array(flat_tok, dtype=np.int64)
        doc = np.array(flat_doc, dtype=np.int64)
        is_content = np.array(flat_content, dtype=bool)
        ct, cd = tok[is_content], doc[is_content]
        # Character grams of every known token: one row per token.
        gram_id: dict[str, int] = {}
        g_rows: list[int] = []
        g_cols: list[int] = []
        for t, i in tok_id.items():
            grams = [gram_id.setdefault(g, len(gram_id)) for g in char_ngrams(t)]
            g_cols.extend(grams)
            g_rows.extend([i] * len(grams))
        self.gram_id = gram_id
        self.grams = _counts(np.array(g_rows, dtype=np.int64), np.array(g_cols, dtype=np.int64),
                             n_tok, len(gram_id))
        content_counts = _counts(cd, ct, n_docs, n_tok)
        w_keys, w_docs = _skip_pairs(ct, cd, n_tok)
        s_keys, s_docs = _pairs(tok, doc, n_tok)
        self.w_pairs = np.unique(w_keys)
        self.s_bigrams = np.unique(s_keys)
        blocks = [
            sparse.hstack([
                content_counts,
                _counts(w_docs, np.searchsorted(self.w_pairs, w_keys), n_docs,
                        len(self.w_pairs)),
            ], format="csr"),
            (content_counts @ self.grams).tocsr(),
            sparse.hstack([
                _counts(doc, tok, n_docs, n_tok),
                _counts(s_docs, np.searchsorted(self.s_bigrams, s_keys), n_docs,
                        len(self.s_bigrams)),
            ], format="csr"),
            content_counts,
        ]
        n_total = float(multiplicity.sum())
        self.idf: list[FloatArray] = []
        self.offsets = [0]
        weighted = []
        for block in blocks:
            df = np.bincount(block.indices, weights=multiplicity[_row_of(block)],
                             minlength=block.shape[1])
            idf = (np.log((1 + n_total) / (1 + df)) + 1.0).astype(np.float32)
            self.idf.append(idf)
            self.offsets.append(self.offsets[-1] + block.shape[1])
            block = block.copy()
            block.data = (1.0 + np.log(block.data)) * idf[block.indices]
            weighted.append(_normalize_rows(block))
        self.n_features = self.offsets[-1]
        x = sparse.hstack(weighted, format="csr", dtype=np.float32)
        self.matrix: sparse.csr_matrix = _normalize_rows(x)
        self.idf_all = np.concatenate(self.idf)
        self.block_of = np.repeat(np.arange(_BLOCKS, dtype=np.int64), np.diff(self.offsets))
        self.in_word_blocks = np.isin(self.block_of, _WORD_BLOCKS)  # per query: no isin
        # Query-side lookups: plain dicts, cheaper than numpy calls on a dozen tokens.
        self.w_pair = {int(k): n_tok + j for j, k in enumerate(self.w_pairs.tolist())}
        self.s_bigram = {
            int(k): self.offsets[2] + n_tok + j for j, k in enumerate(self.s_bigrams.tolist())
        }
        self._gram_cols: dict[str, list[int]] = {}

    @property
    def word_features(self) -> int:
        """Columns ``0 .. word_features`` are the ``w`` block (the prefilter's index)."""
        return self.offsets[1]

    def unigrams(self) -> npt.NDArray[np.bool_]:
        """A mask of the single-word features (of the ``w`` and ``s`` blocks)."""
        mask = np.zeros(self.n_features, dtype=bool)
        mask[: self.n_tok] = True
        mask[self.offsets[2] : self.offsets[2] + self.n_tok] = True
        mask[self.offsets[3] :] = True
        return mask

    def _token_grams(self, t: str, i: int) -> list[int]:
        """Columns of the character grams of one stem (known or not), cached."""
        cols = self._gram_cols.get(t)
        if cols is None:
            base = self.offsets[1]
            if i >= 0:
                g = self.grams
                start, end = g.indptr[i], g.indptr[i + 1]
                reps = g.data[start:end].astype(np.int64)
                cols = (np.repeat(g.indices[start:end], reps) + base).tolist()
            else:
                ids = (self.gram_id.get(x) for x in char_ngrams(t))
                cols = [base + x for x in ids if x is not None]
            if len(self._gram_cols) < _TOKEN_CACHE_SIZE:
                self._gram_cols[t] = cols
        return cols

    def transform(self, analysed: Analysed) -> tuple[IntArray, FloatArray]:
        """Feature ids and L2-normalised tf-idf values of one text."""
        stems, content = analysed
        n_tok, s_base, u_base = self.n_tok, self.offsets[2], self.offsets[3]
        ids = [self.tok_id.get(t, -1) for t in stems]
        feats: list[int] = []
        prev_s = -1
        recent: list[int] = []  # the last PAIR_WINDOW content words (-1: unknown)
        for t, i, c in zip(stems, ids, content, strict=True):
            if c:
                feats.extend(self._token_grams(t, i))
            if i < 0:
                prev_s = -1
                if c:
                    recent.append(-1)
                    del recent[:-PAIR_WINDOW]
                continue
            feats.append(s_base + i)
            if prev_s >= 0 and (col := self.s_bigram.get(prev_s * n_tok + i)) is not None:
                feats.append(col)
            prev_s = i
            if c:
                feats.append(i)
                feats.append(u_base + i)
                for j in recent:
                    if j >= 0:
                        key = j * n_tok + i if j < i else i * n_tok + j
                        if (col := self.w_pair.get(key)) is not None:
                            feats.append(col)
                recent.append(i)
                del recent[:-PAIR_WINDOW]
        if not feats:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        counted = Counter(feats)  # cheaper than np.unique for a few hundred ids
        idx = np.fromiter(counted.keys(), dtype=np.int64, count=len(counted))
        counts = np.fromiter(counted.values(), dtype=np.float64, count=len(counted))
        vals = (1.0 + np.log(counts)) * self.idf_all[idx]
        # Each block to unit length, then the whole vector (as the fitted rows).
        block = self.block_of[idx]
        norms = np.sqrt(np.bincount(block, weights=vals * vals, minlength=_BLOCKS))
        vals = vals / norms[block]
        return idx, (vals / np.sqrt(float(vals @ vals))).astype(np.float32)


_TOKEN_CACHE_SIZE = 200_000
_BONUS_ARTICLES = 8  # the classifier's best articles that get the nearest-phrasing bonus
_BLOCKS = 4
_WORD_BLOCKS = (0, 2)  # the blocks of the similarity index: ``w`` and ``s``


def _gather(m: sparse.csr_matrix, rows: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
    """The stored values of some rows of a CSR matrix: (position in ``rows``, column, value).

    Plain index arithmetic: scipy's row fancy-indexing validates and builds a new matrix,
    which costs more than the arithmetic itself for the few rows of one query.
    """
    starts = m.indptr[rows]
    lens = m.indptr[rows + 1] - starts
    pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    return np.repeat(np.arange(len(rows)), lens), m.indices[pos], m.data[pos]


def _word_blocks(m: sparse.csr_matrix, v: _Vectorizer) -> sparse.csr_matrix:
    """``m`` with the values of the ``w`` and ``s`` blocks only (column ids unchanged)."""
    out = m.copy()
    out.data[~v.in_word_blocks[out.indices]] = 0
    out.eliminate_zeros()
    return out


def _row_of(m: sparse.csr_matrix) -> IntArray:
    """The row index of every stored value of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def _normalize_rows(m: sparse.csr_matrix) -> sparse.csr_matrix:
    sq = np.asarray(m.multiply(m).sum(axis=1)).ravel()
    inv = np.where(sq > 0, 1.0 / np.sqrt(np.where(sq > 0, sq, 1.0)), 0.0)
    out = m.copy()
    out.data = (out.data * inv[_row_of(m)]).astype(np.float32)
    return out


def _train_softmax(
    x: sparse.csr_matrix, y: IntArray, n_classes: int, c: float, max_iter: int,
    min_rows: int = 1, always: npt.NDArray[np.bool_] | None = None,
    dense: FloatArray | None = None,
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """Multinomial logistic regression, L2-regularised, fitted with a small L-BFGS.

    ``dense`` (rows × dims) is a dense feature block next to the sparse ``x`` (the word
    vectors): kept apart, its products are BLAS calls instead of sparse ones.  Returns
    the used sparse columns, their weights, the dense block's weights and the biases.

    Few iterations on purpose: early stopping regularises as well as more iterations
    with a tuned penalty, and keeps the index build well under a second per thousand
    phrasings.  float32 halves the memory traffic of the two sparse products per step.
    """
    n = x.shape[0]
    # Only features the training rows use can get a non-zero weight; features seen in
    # fewer than ``min_rows`` rows memorise one phrasing and are left out, except those
    # marked ``always`` (single words: a key term may well be in one phrasing only).
    df = np.bincount(x.indices, minlength=x.shape[1])
    keep = df >= min_rows
    if always is not None:
        keep |= always & (df > 0)
    used = np.flatnonzero(keep)
    x = x[:, used].astype(np.float32)
    f = len(used)
    xt = x.T.tocsr()
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    dv = np.zeros((n, 0), dtype=np.float32) if dense is None else dense.astype(np.float32)
    size = f * n_classes
    dsize = dv.shape[1] * n_classes

    def loss(theta: FloatArray) -> tuple[float, FloatArray]:
        w = theta[:size].reshape(f, n_classes)
        wd = theta[size : size + dsize].reshape(dv.shape[1], n_classes)
        z = x @ w + dv @ wd + theta[size + dsize :]
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        value = -c * float((onehot * logp).sum()) + 0.5 * float((w * w).sum()) \
            + 0.5 * float((wd * wd).sum())
        g = c * (np.exp(logp) - onehot)
        grad_w = xt @ g + w
        grad_d = dv.T @ g + wd
        return value, np.concatenate([grad_w.ravel(), grad_d.ravel(), g.sum(axis=0)])

    theta = np.zeros(size + dsize + n_classes, dtype=np.float32)
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
            # The minimum of the quadratic through the two values and the slope: far
            # fewer evaluations than halving when the first step overshoots a lot.
            curv = new_value - value - slope * step
            step *= min(0.5, max(0.1, -slope * step / (2 * curv))) if curv > 0 else 0.5
        else:
            break
        s_new, y_new = new_theta - theta, new_grad - grad
        sy = float(s_new @ y_new)
        if sy > 1e-10:
            hist.append((s_new, y_new, 1.0 / sy))
            if len(hist) > 5:
                hist.pop(0)
        theta, value, grad = new_theta, new_value, new_grad
    return (used, theta[:size].reshape(f, n_classes),
            theta[size : size + dsize].reshape(dv.shape[1], n_classes), theta[size + dsize :])


def _meaning_words(text: str, table: WordVectors | None = None) -> list[str]:
    """The words whose vectors make a text's meaning vector: the content words (all
    words if there are none).  Stop words pull every text towards the same point: the
    nearest-phrasing accuracy of the vectors alone was 0.67 with them, 0.72 without
    (held-out Banking77 train, K=10).  With ``table``, only words it holds as one row
    count, when there are any: pasted ids, codes and markup remnants ("u123", "7731aa",
    "b") are spelt from word pieces whose meaning is noise."""
    ws = words(text)
    content = [w for w in ws if w not in STOP_WORDS] or ws
    if table is None:
        return content
    return [w for w in content if table.whole(w) or (w.isalpha() and len(w) > 2)] or content


class Scored(NamedTuple):
    """One query's scores per article (before feedback)."""

    toks: list[str]  # normalised content tokens
    scores: FloatArray  # 0..1: what decisions and place 1 go by
    # The cosine of the article's nearest English phrasing to the query's meaning vector
    # (0 where not computed: no vectors, or not among the classifier's best eight).
    closeness: FloatArray
    runner_up: FloatArray  # the order of places 2-3 (``runner_up_model_weight``)
    vectors: bool  # scored with the word vectors: the ``vector_*`` thresholds apply


class Matcher:
    """An immutable index over a set of articles; build once, query many times."""

    def __init__(self, articles: Iterable[Article], settings: MatchSettings | None = None) -> None:
        self.settings = settings or MatchSettings()
        self.articles: list[Article] = list(articles)
        self.index_of = {a.id: i for i, a in enumerate(self.articles)}
        self.langs = np.array([a.lang for a in self.articles])
        # Identical phrasings are analysed once (a title repeating a question, the same
        # wording in two articles); every phrasing keeps its own row in the index.
        unique: dict[str, int] = {}
        analysed: list[Analysed] = []
        unique_phrases: list[str] = []
        row_of: list[int] = []
        owner: list[int] = []
        for i, art in enumerate(self.articles):
            # The title is one more phrasing: admins write it as the question's gist.
            for phrase in (*art.questions, art.title):
                u = unique.get(phrase)
                if u is None:
                    a = analyse(phrase)
                    u = unique[phrase] = len(analysed) if any(a[1]) else -1
                    if u >= 0:
                        analysed.append(a)
                        unique_phrases.append(phrase)
                if u >= 0:
                    row_of.append(u)
                    owner.append(i)
        rows = np.array(row_of, dtype=np.int64)
        self.owner = np.array(owner, dtype=np.int64)
        n_classes = len(self.articles)
        self.vectorizer = _Vectorizer(analysed, np.bincount(rows, minlength=len(analysed)))
        self.vocabulary: set[str] = set(self.vectorizer.tok_id)
        # rapidfuzz's token_sort_ratio is ratio() of the sorted tokens: sort them once here.
        unique_texts = [
            " ".join(sorted(s for s, c in zip(*a, strict=True) if c)) for a in analysed
        ]
        self.texts = [unique_texts[r] for r in rows]
        full = self.vectorizer.matrix
        del self.vectorizer.matrix
        # The similarity index keeps the word blocks only (rapidfuzz covers spelling): a
        # quarter of the values of the full rows, which only the classifier needs.
        self.x: sparse.csr_matrix = _normalize_rows(_word_blocks(full, self.vectorizer))[rows]
        # The inverted index of the prefilter: content-word feature -> phrasings.
        self.xt = self.x[:, : self.vectorizer.word_features].T.tocsr()
        self.by_article: list[IntArray] = np.split(
            np.argsort(self.owner, kind="stable"),
            np.cumsum(np.bincount(self.owner, minlength=n_classes))[:-1],
        ) if n_classes else []
        # Classifier weights only for the features its training rows use: ``w_row`` maps
        # a feature to its row of ``w`` (or to the all-zero last row).
        self.w = np.zeros((1, n_classes), dtype=np.float32)
        self.w_row = np.zeros(self.vectorizer.n_features, dtype=np.int32)
        self.b = np.zeros(n_classes, dtype=np.float32)
        self._init_vectors(unique_phrases, rows)
        if n_classes >= 2 and len(rows):
            train = self._training_rows()
            dense = None
            if self.word_vectors is not None:
                dense = self.phrase_vectors[rows[train]] * self.settings.vector_scale
            used, w, wd, self.b = _train_softmax(
                full[rows[train]], self.owner[train], n_classes, self.settings.regularization,
                self.settings.max_iterations, self.settings.min_feature_rows,
                self.vectorizer.unigrams(), dense,
            )
            # Applied to the unit query vector: the scale is folded into the weights.
            self.w_vec = wd * self.settings.vector_scale
            self.w = np.vstack([w, np.zeros((1, n_classes), dtype=np.float32)])
            self.w_row[:] = len(used)
            self.w_row[used] = np.arange(len(used), dtype=np.int32)
        self._layout_cache: dict[str, str] = {}
        # Articles a query in each language may match (all of them for an unknown one).
        self._all_langs = np.ones(n_classes, dtype=bool)
        self._lang_mask = {lang: self.langs == lang for lang in set(self.langs.tolist())}

    def _init_vectors(self, phrases: Sequence[str], rows: IntArray) -> None:
        """The English phrasings' meaning vectors and, per article, which distinct
        phrasings are its own (for the nearest-phrasing bonus).  Only when the setting is
        on and some article is in English: the table is English only, and a Russian KB
        does not pay for loading it."""
        n_classes = len(self.articles)
        self.word_vectors: WordVectors | None = None
        self.w_vec = np.zeros((0, n_classes), dtype=np.float32)
        self.phrase_vectors: FloatArray = np.zeros((len(phrases), 0), dtype=np.float32)
        self._rows_by_article: list[IntArray] = []
        self._kb_words: list[str] = []
        self._kb_word_vectors: FloatArray = np.zeros((0, 0), dtype=np.float32)
        self._synonyms: dict[str, str] = {}
        if not self.settings.vectors or not (self.langs == "en").any():
            return
        self.word_vectors = bundled()
        if self.word_vectors is None:
            return
        en = self.langs[self.owner] == "en"
        is_en = np.zeros(len(phrases), dtype=bool)
        is_en[rows[en]] = True
        wv = self.word_vectors
        texts = [_meaning_words(p, wv) if e else [] for p, e in zip(phrases, is_en, strict=True)]
        self.phrase_vectors = self.word_vectors.embed_many(texts)
        # The articles' English content words with a vector: the stand-ins for query words
        # the articles do not use.
        vocab = sorted({w for t in texts for w in t if w not in STOP_WORDS})
        vecs = self.word_vectors.embed_many([[w] for w in vocab])
        has = np.asarray(vecs.any(axis=1), dtype=np.bool_)
        self._kb_words = [w for w, h in zip(vocab, has, strict=True) if h]
        self._kb_word_vectors = np.ascontiguousarray(vecs[has])
        # Per article its distinct English phrasings: copies of a phrasing (the 100k
        # benchmark, one wording in two articles) cost one cosine, not one per row.
        self._rows_by_article = [np.zeros(0, dtype=np.int64)] * n_classes
        pairs = np.unique(np.stack([self.owner[en], rows[en]], axis=1), axis=0)
        arts, starts = np.unique(pairs[:, 0], return_index=True)
        for a, part in zip(arts.tolist(), np.split(pairs[:, 1], starts[1:]), strict=True):
            self._rows_by_article[a] = part

    def _nearest(self, top: IntArray, q: FloatArray) -> FloatArray:
        """Per article of ``top``: the cosine of its nearest English phrasing to ``q``.

        Only the classifier's favourites are looked at (the bonus reorders the top few;
        all articles' phrasings were a 10 MB read per query at 10k phrasings, and the
        top 8 rank as well on held-out Banking77 train)."""
        parts = [self._rows_by_article[int(a)] for a in top]
        lens = np.array([len(p) for p in parts])
        out = np.zeros(len(top), dtype=np.float32)
        has = lens > 0
        if has.any():
            cos = self.phrase_vectors[np.concatenate(parts)] @ q
            starts = np.cumsum(lens) - lens
            out[has] = np.maximum.reduceat(cos, starts[has])
        return out

    def _substitute(self, text: str) -> str:
        """``text``'s words with each content word no article uses replaced by the
        articles' word nearest to it in meaning, if their cosine reaches
        ``vector_synonym_threshold``: the term features then see "terminate" where the
        user wrote "deactivate" (top-3 +0.003 on held-out Banking77 train)."""
        wv = self.word_vectors
        thr = self.settings.vector_synonym_threshold
        ws = words(text)
        if wv is None or thr >= 1 or not len(self._kb_words):
            return text
        out: list[str] = []
        changed = False
        for w in ws:
            if w in STOP_WORDS or stem(w) in self.vectorizer.tok_id:
                out.append(w)
                continue
            sub = self._synonyms.get(w)
            if sub is None:
                sub = w
                v = wv.embed([w])
                if v.any():
                    # einsum, not a BLAS product: OpenBLAS runs a product this size on
                    # threads whose wake-up after an idle spell cost up to 6 ms of CPU
                    # (einsum: 0.2 ms flat, for 2,235 words).
                    cos = np.einsum("ij,j->i", self._kb_word_vectors, v)
                    j = int(cos.argmax())
                    if cos[j] >= thr:
                        sub = self._kb_words[j]
                if len(self._synonyms) < _TOKEN_CACHE_SIZE:
                    self._synonyms[w] = sub
            changed |= sub != w
            out.append(sub)
        return " ".join(out) if changed else text

    def _training_rows(self) -> IntArray:
        cap = self.settings.max_train_per_article
        picked: list[IntArray] = []
        for own in self.by_article:
            if len(own) > cap:
                # Always keep the title (the last phrasing); spread the rest evenly.
                spread = np.linspace(0, len(own) - 2, cap - 1).astype(np.int64)
                own = np.unique(np.r_[own[spread], own[-1]])
            picked.append(own)
        return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)

    def normalize(self, query: str) -> list[str]:
        """The query's content stems after undoing a wrong keyboard layout."""
        stems, content = analyse(fix_layout(query, self.vocabulary, self._layout_cache))
        return [s for s, c in zip(stems, content, strict=True) if c]

    def score(self, query: str, lang: str | None = None) -> tuple[list[str], FloatArray]:
        """Normalised tokens and a 0..1 score per article (before feedback)."""
        scored = self.score_details(query, lang)
        return scored.toks, scored.scores

    def _read(self, query: str, lang: str | None) -> tuple[str, str | None, bool]:
        """The query after undoing a wrong keyboard layout, its language (the hint, else
        its own script) and whether it is scored with the word vectors (English, vectors
        on and loaded)."""
        fixed = fix_layout(query, self.vocabulary, self._layout_cache)
        lang = lang or script_lang(fixed)
        return fixed, lang, self.word_vectors is not None and lang == "en"

    def score_details(self, query: str, lang: str | None = None) -> Scored:
        """:meth:`score`, with what :meth:`decide` and :meth:`rank` also need (see
        :class:`Scored`)."""
        n = len(self.articles)
        closeness = np.zeros(n, dtype=np.float32)
        fixed, lang, vectors = self._read(query, lang)
        analysed = analyse(self._substitute(fixed) if vectors else fixed)
        toks = [s for s, c in zip(*analysed, strict=True) if c]
        if not toks or not n:
            return Scored(toks, np.zeros(n), closeness, np.zeros(n), vectors)
        idx, val = self.vectorizer.transform(analysed)
        if not len(idx):
            return Scored(toks, np.zeros(n), closeness, np.zeros(n), vectors)
        allowed = self._lang_mask.get(lang or "", self._all_langs)
        z = val @ self.w[self.w_row[idx]] + self.b
        if vectors and self.word_vectors is not None:
            # The meaning vector of the user's own words, not of the stand-ins.
            q = self.word_vectors.embed(_meaning_words(fixed, self.word_vectors))
            if len(self.w_vec):
                z = z + q @ self.w_vec
            if q.any() and self.settings.vector_bonus:
                k = min(_BONUS_ARTICLES, n) - 1
                top = np.argpartition(-np.where(allowed, z, -np.inf), k)[: k + 1]
                closeness[top] = self._nearest(top, q)
                z[top] += self.settings.vector_bonus * closeness[top]
        z = np.where(allowed, z, -np.inf)
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        sim = self._similarity(" ".join(sorted(toks)), idx, val, prob)
        s, r = self.settings.model_weight, self.settings.runner_up_model_weight
        return Scored(toks, np.where(allowed, s * prob + (1 - s) * sim, 0.0), closeness,
                      np.where(allowed, r * prob + (1 - r) * sim, 0.0), vectors)

    def _similarity(
        self, text: str, idx: IntArray, val: FloatArray, prob: FloatArray
    ) -> FloatArray:
        """Per article: the best of its candidate phrasings (cosine and rapidfuzz)."""
        m = self.settings.candidates
        word = idx < self.vectorizer.word_features
        feats, weights = idx[word], val[word]
        # Rarest features first, until the postings budget is spent: a word in every
        # tenth phrasing adds little to "which phrasings are close" and costs the most.
        lens = self.xt.indptr[feats + 1] - self.xt.indptr[feats]
        order = np.argsort(lens, kind="stable")
        spent = np.cumsum(lens[order])
        keep = order[: max(1, int(np.searchsorted(spent, self.settings.prefilter_postings,
                                                  side="right")))]
        label, post, data = _gather(self.xt, feats[keep])
        hits = np.zeros(0, dtype=np.int64)
        if len(post):
            pre = np.bincount(post, weights=data * weights[keep][label],
                              minlength=self.x.shape[0])
            # The best phrasings without sorting all of them: the postings with the
            # highest totals (a phrasing appears once per matched feature), then the
            # best ``m`` of those phrasings.
            total = pre[post]
            if len(total) > 4 * m:
                post = post[np.argpartition(-total, 4 * m)[: 4 * m]]
            hits = np.unique(post)
            if len(hits) > m:
                hits = hits[np.argpartition(-pre[hits], m)[:m]]
        # The classifier's favourites are always re-ranked too, so a query whose words
        # are all misspelt still gets a rapidfuzz look at the right phrasings.
        top = np.argpartition(-prob, min(3, len(prob) - 1))[:3]
        extra = [self.by_article[int(a)][: max(8, m // 4)] for a in top]
        cand = np.unique(np.concatenate([hits, *extra]))
        q = np.zeros(self.x.shape[1], dtype=np.float32)
        words = self.vectorizer.in_word_blocks[idx]
        q[idx[words]] = val[words]
        row, col, data = _gather(self.x, cand)
        norm = float(np.sqrt(val[words] @ val[words])) or 1.0
        cos = np.bincount(row, weights=data * q[col] / norm, minlength=len(cand))
        fz = process.cdist([text], [self.texts[c] for c in cand], scorer=fuzz.ratio,
                           dtype=np.float32)[0] / 100.0
        per_ph = 0.5 * cos + 0.5 * fz
        sim = np.zeros(len(self.articles))
        np.maximum.at(sim, self.owner[cand], per_ph)
        return sim

    def uses_vectors(self, query: str, lang: str | None = None) -> bool:
        """Whether :meth:`score` scores this query with the word vectors (an English
        query, vectors on and loaded): its decision takes the ``vector_*`` thresholds."""
        return self._read(query, lang)[2]

    def decide(
        self, ranked: Sequence[tuple[int, float]], vectors: bool = False,
        closeness: float = 0.0,
    ) -> Decision:
        """answer / suggest / none from the sorted (article, score) list; ``vectors``:
        the scores came with the word vectors (see :meth:`uses_vectors`); ``closeness``:
        then the cosine of the best article's nearest phrasing (:meth:`score_details`),
        which counts towards "not none" (in-scope kept at 80% out-of-scope recall 0.654 →
        0.663 on held-out Banking77 train)."""
        st = self.settings
        answer, suggest, margin = (
            (st.vector_answer_threshold, st.vector_suggest_threshold, st.vector_answer_margin)
            if vectors else (st.answer_threshold, st.suggest_threshold, st.answer_margin)
        )
        # Still 0..1: (score + w × closeness) / (1 + w).
        w = st.vector_closeness_weight if vectors else 0.0
        if not ranked or (ranked[0][1] + w * closeness) / (1 + w) < suggest:
            return "none"
        # The next-best score, wherever the runner-up order put it.
        second = max((sc for _, sc in ranked[1:]), default=0.0)
        if ranked[0][1] >= answer and ranked[0][1] - second >= margin:
            return "answer"
        return "suggest"

    def rank(
        self, scores: FloatArray, exclude: Collection[str] = (),
        runner_up: FloatArray | None = None,
    ) -> list[tuple[int, float]]:
        """Article indices with scores, excluded ids dropped: the best score first, then
        the others in the ``runner_up`` order (:meth:`score_details`; by score if None),
        then the next-best by score if that order left it out (for the answer margin)."""
        n = self.settings.max_results + len(exclude) + 1

        def ok(i: int) -> bool:
            return scores[i] > 0 and self.articles[i].id not in exclude

        by_score = [int(i) for i in np.argsort(-scores, kind="stable")[:n] if ok(int(i))]
        if runner_up is None or not by_score:
            return [(i, float(scores[i])) for i in by_score]
        best = by_score[0]
        rest = [int(i) for i in np.argsort(-runner_up, kind="stable")[: n + 1]
                if int(i) != best and ok(int(i))]
        order = [best, *rest[: n - 1]]
        if len(by_score) > 1 and by_score[1] not in order:
            order.append(by_score[1])
        return [(i, float(scores[i])) for i in order]

    def match(
        self, query: str, lang: str | None = None, exclude: Collection[str] = ()
    ) -> MatchResult:
        """Score, rank and decide (no feedback; see :class:`kb.service.KnowledgeBase`)."""
        scored = self.score_details(query, lang)
        ranked = self.rank(scored.scores, exclude, scored.runner_up)
        return MatchResult(
            query=query,
            decision=self.decide(ranked, scored.vectors,
                                 float(scored.closeness[ranked[0][0]]) if ranked else 0.0),
            results=tuple(
                ScoredArticle(self.articles[i], round(s, 4))
                for i, s in ranked[: self.settings.max_results]
            ),
        )
