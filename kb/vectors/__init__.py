"""Static English word vectors bundled with the package: word meaning without a model.

``en_minilm.npz`` holds one vector per WordPiece token of sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0), distilled once by ``kb/vectors/build.py`` in the manner of
model2vec: each token embedded alone by the model, PCA-reduced, Zipf/SIF-weighted, stored
as int8 with a scale per row.  A text's vector is the mean of its tokens' vectors, so
"refused" lands near "declined" although the two share no letters.  Reading the table
needs numpy only: the tokeniser is the model's WordPiece (greedy longest match) over the
normaliser's lower-case words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse  # type: ignore[import-untyped]

TABLE = Path(__file__).resolve().parent / "en_minilm.npz"
FloatArray = npt.NDArray[np.float32]
_MAX_WORD = 40  # longer "words" are noise (hashes, pasted ids): no vector


class WordVectors:
    """A token → vector table and the WordPiece split that reads it."""

    def __init__(
        self, tokens: Iterable[str], vectors: npt.NDArray[Any],
        scales: npt.NDArray[Any] | None = None,
    ) -> None:
        self.index = {t: i for i, t in enumerate(tokens)}
        # Kept as stored (int8 and a scale per row); a word's rows are scaled on first use.
        # Converting the whole table to float32 up front took longer than reading it.
        self.vectors = vectors
        self.scales = (np.ones(len(vectors), dtype=np.float32) if scales is None
                       else np.asarray(scales, dtype=np.float32))
        self.dims = int(vectors.shape[1])
        self._pieces: dict[str, tuple[int, ...]] = {}

    @classmethod
    def load(cls, path: Path = TABLE) -> WordVectors:
        """Read a table written by ``kb/vectors/build.py``."""
        with np.load(path, allow_pickle=False) as data:
            return cls(data["tokens"].tolist(), data["vectors"], data["scales"])

    def whole(self, word: str) -> bool:
        """Whether ``word`` has a row of its own (a vocabulary token or a whole-word row),
        rather than being spelt from pieces."""
        return word in self.index

    def pieces(self, word: str) -> list[int]:
        """Row ids of the word's WordPiece tokens (greedy longest match); [] if it cannot
        be spelt with the vocabulary."""
        if len(word) > _MAX_WORD:
            return []
        i = self.index.get(word)
        if i is not None:
            return [i]
        out: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                j = self.index.get(piece)
                if j is not None:
                    out.append(j)
                    break
                end -= 1
            else:
                return []
            start = end
        return out

    def word(self, word: str) -> tuple[FloatArray, int] | None:
        """The sum of the word's token vectors and the number of tokens."""
        ids = self._pieces.get(word)
        if ids is None:
            ids = tuple(self.pieces(word))
            # Bounded: a bot reads endless new words (typos, ids); only the split is kept,
            # a few dozen bytes, not the 1 KB vector.
            if len(self._pieces) < _CACHE_SIZE:
                self._pieces[word] = ids
        if not ids:
            return None
        rows = self.vectors[list(ids)].astype(np.float32) * self.scales[list(ids)][:, None]
        return rows.sum(axis=0), len(ids)

    def embed(self, words: Iterable[str]) -> FloatArray:
        """The unit-length mean of the words' token vectors (zeros if none is known)."""
        total = np.zeros(self.dims, dtype=np.float32)
        n = 0
        for w in words:
            hit = self.word(w)
            if hit is not None:
                total += hit[0]
                n += hit[1]
        norm = float(np.sqrt(total @ total))
        return total / norm if n and norm > 0 else total

    def embed_many(self, texts: Sequence[Sequence[str]]) -> FloatArray:
        """:meth:`embed` of many word lists at once: one row per list (a sparse product
        over the distinct words, not a numpy call per word)."""
        word_id: dict[str, int] = {}
        sums: list[FloatArray] = []
        rows: list[int] = []
        cols: list[int] = []
        for r, ws in enumerate(texts):
            for w in ws:
                j = word_id.get(w)
                if j is None:
                    hit = self.word(w)
                    j = word_id[w] = len(sums) if hit is not None else -1
                    if hit is not None:
                        sums.append(hit[0])
                if j >= 0:
                    rows.append(r)
                    cols.append(j)
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        if sums:
            counts = sparse.csr_matrix(
                (np.ones(len(rows), dtype=np.float32), (rows, cols)),
                shape=(len(texts), len(sums)),
            )
            out = np.asarray(counts @ np.stack(sums), dtype=np.float32)
        norms = np.sqrt((out * out).sum(axis=1))
        out[norms > 0] /= norms[norms > 0, None]
        return out


_CACHE_SIZE = 100_000  # words whose WordPiece split is remembered


@lru_cache(maxsize=1)
def bundled() -> WordVectors | None:
    """The table shipped in the package, loaded once per process (None if missing)."""
    return WordVectors.load(TABLE) if TABLE.exists() else None
