"""The matcher's index internals: features, classifier pruning, prefilter budget."""

from dataclasses import replace

import numpy as np

from kb.articles import Article
from kb.matcher import Matcher, MatchSettings, _Vectorizer
from kb.normalize import analyse


def article(id_: str, questions: list[str], lang: str = "en") -> Article:
    return Article(
        id=id_, title=id_.replace("-", " "), category="general", lang=lang,
        questions=tuple(questions), body="Answer.", tags=(), links=(),
        path=f"<memory>/{id_}.md", line=1,
    )


PHRASES = [
    "How do I reset my password?",
    "my card was declined at the shop",
    "why was my card declined",
    "I can't connect to the vpn",
    "пароль не подходит к кабинету",
]


def test_query_vector_equals_the_fitted_row() -> None:
    docs = [analyse(p) for p in PHRASES]
    v = _Vectorizer(docs, np.ones(len(docs), dtype=np.int64))
    for r, doc in enumerate(docs):
        idx, val = v.transform(doc)
        q = np.zeros(v.n_features, dtype=np.float32)
        q[idx] = val
        assert np.allclose(v.matrix[r].toarray().ravel(), q, atol=1e-6), PHRASES[r]
        assert abs(float(val @ val) - 1.0) < 1e-5


def test_unknown_words_only_add_their_known_character_grams() -> None:
    docs = [analyse(p) for p in PHRASES]
    v = _Vectorizer(docs, np.ones(len(docs), dtype=np.int64))
    idx, _ = v.transform(analyse("passwrd"))
    assert len(idx) and all(v.block_of[i] == 1 for i in idx)  # character block only
    assert len(v.transform(analyse("zzqx"))[0]) == 0


def test_pairs_of_one_training_phrasing_get_no_weight_single_words_do() -> None:
    arts = [
        article("pw", ["reset password", "password forgotten", "lost password zebra"]),
        article("card", ["card declined", "card declined today", "card refused"]),
    ]
    m = Matcher(arts, replace(MatchSettings(), min_feature_rows=2))
    v = m.vectorizer
    zero_row = m.w.shape[0] - 1
    tok = v.tok_id
    once_pair = v.w_pair[tok["password"] * v.n_tok + tok["zebra"]]
    twice_pair = v.w_pair[tok["card"] * v.n_tok + tok["declin"]]
    assert m.w_row[once_pair] == zero_row  # one phrasing only: pruned
    assert m.w_row[twice_pair] != zero_row
    # A single word is kept even from one phrasing: it may be the article's key term.
    assert m.w_row[tok["zebra"]] != zero_row
    assert np.abs(m.w[m.w_row[tok["zebra"]]]).sum() > 0
    m1 = Matcher(arts, replace(MatchSettings(), min_feature_rows=1))
    assert m1.w_row[once_pair] != m1.w.shape[0] - 1


def test_prefilter_reads_the_rarest_words_first() -> None:
    # "account" is in every phrasing of the filler articles; "quasar" in one phrasing.
    arts = [article(f"f{i}", [f"account topic{i} one", f"account topic{i} two"])
            for i in range(30)]
    arts.append(article("target", ["account quasar settings", "other words here"]))
    m = Matcher(arts, replace(MatchSettings(), candidates=2, prefilter_postings=1))
    idx, val = m.vectorizer.transform(analyse("account quasar"))
    # A classifier that favours three filler articles: only the prefilter can bring
    # the target's phrasing into the re-ranked candidates.
    prob = np.zeros(len(arts))
    prob[:3] = [0.5, 0.3, 0.2]
    sim = m._similarity("account quasar", idx, val, prob)
    assert int(np.argmax(sim)) == len(arts) - 1
    assert sim[-1] > 0.5


def test_duplicate_phrasings_keep_their_own_rows() -> None:
    arts = [article("pw", ["reset password"] * 3), article("card", ["card declined"] * 2)]
    m = Matcher(arts)
    assert m.x.shape[0] == len(m.texts) == len(m.owner) == 3 + 1 + 2 + 1  # with titles
    assert list(m.owner) == [0, 0, 0, 0, 1, 1, 1]
    assert m.match("reset my password").results[0].article.id == "pw"


def test_word_pairs_are_unordered_and_span_a_window() -> None:
    docs = [analyse(p) for p in ["transfer fee", "card declined at the shop"]]
    v = _Vectorizer(docs, np.ones(len(docs), dtype=np.int64))
    tok = v.tok_id
    pair = v.w_pair[min(tok["transfer"], tok["fee"]) * v.n_tok + max(tok["transfer"], tok["fee"])]
    # The other order, with words in between (stop words and an unknown one), still
    # yields the pair; a word further away than the window does not pair up.
    idx, _ = v.transform(analyse("what is the fee for a quick transfer"))
    assert pair in idx.tolist()
    far = "fee " + " ".join(f"word{i}" for i in range(8)) + " transfer"
    assert pair not in v.transform(analyse(far))[0].tolist()
