"""The bundled English word vectors: the table ships, loads, and finds paraphrases."""

from dataclasses import replace
from importlib.resources import files

import numpy as np
import pytest

import kb.matcher
from kb.matcher import Matcher, MatchSettings
from kb.vectors import TABLE, WordVectors, bundled
from tests.kb.test_matcher import article

ARTICLES = [
    article("card-declined", ["why was my card declined", "my card payment was declined",
                              "payment declined at the shop"]),
    article("reset-password", ["how do I reset my password", "I forgot my password",
                               "change my login password"]),
    article("vpn", ["I can't connect to the vpn", "vpn connection fails",
                    "vpn keeps disconnecting"]),
    article("delivery", ["where is my parcel", "my order has not arrived", "track my package"]),
    article("close-account", ["how do I close my account", "delete my account",
                              "cancel my account"]),
]

# No word (nor stem) of these questions is in the right article's phrasings or title.
PARAPHRASES = {
    "the merchant refused the transaction": "card-declined",
    "the store rejected it": "card-declined",
    "terminate this profile": "close-account",
    "the network tunnel drops": "vpn",
}


def test_the_table_is_package_data_of_kb_vectors() -> None:
    resource = files("kb.vectors").joinpath("en_minilm.npz")
    assert resource.is_file()
    assert TABLE.stat().st_size < 8 * 2**20
    wv = bundled()
    assert wv is not None and wv.dims == 256


def test_related_words_are_closer_than_unrelated_ones() -> None:
    wv = bundled()
    assert wv is not None
    refused = wv.embed(["refused"])
    assert abs(float(refused @ refused) - 1.0) < 1e-5
    assert float(refused @ wv.embed(["declined"])) > float(refused @ wv.embed(["password"])) + 0.2


def test_wordpiece_split_and_words_it_cannot_spell() -> None:
    wv = WordVectors(["de", "##act", "##ivate", "card"], np.eye(4, dtype=np.int8))
    assert wv.pieces("card") == [3]
    assert wv.pieces("deactivate") == [0, 1, 2]
    assert wv.pieces("пароль") == []
    assert not wv.embed(["пароль"]).any()
    rows = wv.embed_many([["card"], ["deactivate", "card"], []])
    assert np.allclose(rows[0], [0, 0, 0, 1])
    assert np.allclose(rows[1], np.array([1, 1, 1, 1]) / 2)
    assert not rows[2].any()


@pytest.mark.parametrize(("query", "expected"), sorted(PARAPHRASES.items()))
def test_a_paraphrase_with_no_shared_words_is_found_only_with_vectors(
    query: str, expected: str
) -> None:
    with_vectors = Matcher(ARTICLES).match(query)
    without = Matcher(ARTICLES, replace(MatchSettings(), vectors=False)).match(query)
    assert with_vectors.results[0].article.id == expected
    assert without.results[0].article.id != expected


def test_vectors_off_is_the_matcher_without_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    off = Matcher(ARTICLES, replace(MatchSettings(), vectors=False))
    assert off.word_vectors is None
    monkeypatch.setattr(kb.matcher, "bundled", lambda: None)  # a package without the file
    missing = Matcher(ARTICLES)
    assert missing.word_vectors is None
    for q in [*PARAPHRASES, "why was my card declined", "reset password"]:
        assert np.array_equal(off.score(q)[1], missing.score(q)[1])
        assert off.match(q) == missing.match(q)


def test_a_russian_kb_and_russian_queries_do_not_use_the_vectors() -> None:
    ru = [article("pw", ["не помню пароль", "сбросить пароль"], "ru"),
          article("vpn", ["не работает впн", "впн отключается"], "ru")]
    assert Matcher(ru).word_vectors is None
    mixed = Matcher([*ARTICLES, *ru])
    assert mixed.word_vectors is not None
    assert not mixed.uses_vectors("не помню пароль")
    assert mixed.uses_vectors("forgot my password")


def test_vector_scored_queries_take_the_vector_thresholds() -> None:
    st = MatchSettings()
    m = Matcher(ARTICLES)
    score = (st.suggest_threshold + st.vector_suggest_threshold) / 2
    ranked = [(0, score), (1, 0.0)]
    assert m.decide(ranked, vectors=False) != "none"
    assert m.decide(ranked, vectors=True) == "none"


def test_the_config_switches_the_vectors_and_overrides_every_modes_thresholds() -> None:
    from bot.app import match_settings
    from config.settings import KbSettings, Settings

    default = match_settings(Settings())
    assert default.vectors and default.vector_answer_threshold != default.answer_threshold
    off = match_settings(Settings(kb=KbSettings(vectors=False)))
    assert not off.vectors
    tuned = match_settings(Settings(kb=KbSettings(answer_threshold=0.9, answer_margin=0.3)))
    assert tuned.answer_threshold == tuned.vector_answer_threshold == 0.9
    assert tuned.answer_margin == tuned.vector_answer_margin == 0.3
    assert tuned.suggest_threshold == default.suggest_threshold  # not overridden


def test_common_whole_words_have_rows_of_their_own() -> None:
    wv = bundled()
    assert wv is not None
    # Split into WordPieces by the model's vocabulary, embedded as one word at build time.
    assert len(wv.pieces("refund")) == 1
    assert len(wv.pieces("refundqq")) > 1  # not a word: still spelt with pieces
    assert float(wv.embed(["refund"]) @ wv.embed(["reimbursement"])) > float(
        wv.embed(["refund"]) @ wv.embed(["parcel"])) + 0.2


def test_a_word_no_article_uses_stands_in_for_the_nearest_article_word() -> None:
    m = Matcher(ARTICLES)
    assert m._substitute("the merchant rejected it") == "the merchant declined it"
    assert m._substitute("my card was declined") == "my card was declined"  # known words
    never = Matcher(ARTICLES, MatchSettings(vector_synonym_threshold=1.0))
    assert never._substitute("the merchant refused it") == "the merchant refused it"
    assert Matcher(ARTICLES, MatchSettings(vectors=False))._substitute(
        "the merchant refused it") == "the merchant refused it"


def test_closeness_in_meaning_counts_towards_not_none() -> None:
    st = MatchSettings()
    m = Matcher(ARTICLES)
    ranked = [(0, st.vector_suggest_threshold - 0.01), (1, 0.0)]
    assert m.decide(ranked, vectors=True, closeness=0.0) == "none"
    assert m.decide(ranked, vectors=True, closeness=0.9) != "none"
    # Only for queries scored with the vectors.
    low = [(0, st.suggest_threshold - 0.01), (1, 0.0)]
    assert m.decide(low, vectors=False, closeness=0.9) == "none"


def test_match_reports_the_closeness_it_decided_with() -> None:
    m = Matcher(ARTICLES)
    scored = m.score_details("the merchant refused the transaction")
    scores, closeness = scored.scores, scored.closeness
    best = int(np.argmax(scores))
    assert m.articles[best].id == "card-declined"
    assert 0.3 < closeness[best] <= 1.0
    ru = m.score_details("не помню пароль")
    assert not ru.closeness.any() and not ru.vectors


def test_the_best_goes_first_and_the_runners_up_by_their_own_order() -> None:
    m = Matcher(ARTICLES)
    scores = np.array([0.9, 0.5, 0.4, 0.3, 0.2])
    runner_up = np.array([0.1, 0.2, 0.3, 0.8, 0.7])  # the best by score stays first anyway
    ranked = m.rank(scores, (), runner_up)
    assert [i for i, _ in ranked[:3]] == [0, 3, 4]
    assert ranked[-1] == (1, 0.5)  # the next-best by score is kept for the answer margin
    assert m.decide(ranked, vectors=False) == m.decide(m.rank(scores), vectors=False)
    excluded = m.rank(scores, {m.articles[3].id}, runner_up)
    assert 3 not in [i for i, _ in excluded]
    assert [i for i, _ in m.rank(scores)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "noisy",
    [
        "I forgot my password, ticket #48213 user id 7731aa",
        "I forgot my password @channel @here @U123 <!everyone> <b>x</b> & co",
        "my vpn won't connect since 10:30 error 0x800704C9",
    ],
)
def test_pasted_ids_and_markup_leave_a_clear_question_answered(noisy: str) -> None:
    """Ids, codes and markup remnants are spelt from word pieces whose vectors are noise:
    they stay out of the meaning vector, so the bundled KB still answers."""
    from bot.app import build_kb
    from bot.content import load_content
    from config.settings import Settings

    settings = Settings()
    content, problems = load_content(settings)
    assert content is not None and not problems
    result = build_kb(settings, content).search(noisy)
    assert result.decision == "answer", result
