from pathlib import Path

import pytest

from kb.service import KnowledgeBase
from tests.kb.conftest import article_text, write

ARTICLES = {
    "vpn": ["vpn does not connect", "cannot connect to the vpn", "vpn client stuck on connecting"],
    "password": ["I forgot my password", "how do I reset my password", "password reset link"],
    "invoice": ["where can I download my invoice", "I need an invoice for last month"],
    "disk": ["the server disk is full", "no space left on device", "out of disk space"],
}
RU = {
    "ru-vpn": ["не подключается впн", "vpn не соединяется", "ошибка подключения vpn"],
    "ru-password": ["забыл пароль", "как сбросить пароль", "не помню пароль от кабинета"],
}


@pytest.fixture
def kb(kb_dir: Path) -> KnowledgeBase:
    for id_, qs in ARTICLES.items():
        write(kb_dir, f"en/{id_}.md", article_text(id_, qs, category=f"cat-{id_}"))
    for id_, qs in RU.items():
        write(kb_dir, f"ru/{id_}.md", article_text(id_, qs, lang="ru", category="cat-ru"))
    return KnowledgeBase(kb_dir)


def test_search_finds_and_decides(kb: KnowledgeBase) -> None:
    assert kb.problems == []
    r = kb.search("I forgot my password")
    assert r.decision == "answer" and r.results[0].article.id == "password"
    assert 0 < r.results[0].score <= 1
    assert len(r.results) <= 3
    assert [x.score for x in r.results] == sorted((x.score for x in r.results), reverse=True)


def test_typos_and_word_order(kb: KnowledgeBase) -> None:
    assert kb.search("pasword resett").results[0].article.id == "password"
    assert kb.search("connect vpn cannot").results[0].article.id == "vpn"


def test_out_of_scope_is_none(kb: KnowledgeBase) -> None:
    assert kb.search("what is the weather like in paris tomorrow").decision == "none"
    assert kb.search("!!! 😀").decision == "none"
    assert kb.search("").results == ()


def test_lang_prefers_that_language(kb: KnowledgeBase) -> None:
    r = kb.search("vpn", "ru")
    assert all(x.article.lang == "ru" for x in r.results)
    assert kb.search("забыл пароль", "ru").results[0].article.id == "ru-password"
    # Russian typed in the English layout.
    assert kb.search("pf,sk gfhjkm", "ru").results[0].article.id == "ru-password"


def test_exclude_drops_shown_articles(kb: KnowledgeBase) -> None:
    r = kb.search("I forgot my password", exclude={"password"})
    assert "password" not in [x.article.id for x in r.results]


def test_get(kb: KnowledgeBase) -> None:
    assert kb.get("vpn") is not None and kb.get("vpn").title == "vpn"  # type: ignore[union-attr]
    assert kb.get("nope") is None


def test_negative_feedback_lowers_and_positive_raises(kb: KnowledgeBase) -> None:
    q = "vpn is slow and drops"
    before = {x.article.id: x.score for x in kb.search(q).results}["vpn"]
    for _ in range(3):
        kb.record_feedback("vpn", q, helped=False)
    # A fuzzy-similar wording of the same question is affected too.
    after = {x.article.id: x.score for x in kb.search("VPN is slow, drops!").results}
    assert after.get("vpn", 0.0) < before - 0.1
    kb2_q = "cannot connect to the vpn at home"
    base = kb.search(kb2_q).results[0]
    assert base.article.id == "vpn"
    kb.record_feedback("vpn", kb2_q, helped=True)
    assert kb.search(kb2_q).results[0].score > base.score
    # Unrelated questions are untouched.
    assert kb.search("I forgot my password").results[0].article.id == "password"


def test_load_feedback_replays(kb_dir: Path) -> None:
    for id_, qs in ARTICLES.items():
        write(kb_dir, f"{id_}.md", article_text(id_, qs))
    fresh = KnowledgeBase(kb_dir)
    replayed = KnowledgeBase(kb_dir)
    replayed.load_feedback([("disk", "server disk is full again", False)] * 4)
    q = "server disk is full again"
    s_fresh = fresh.search(q).results[0]
    s_replayed = {x.article.id: x.score for x in replayed.search(q).results}
    assert s_fresh.article.id == "disk"
    assert s_replayed.get("disk", 0.0) < s_fresh.score


def test_detect_category_from_articles_and_keywords(kb_dir: Path) -> None:
    for id_, qs in ARTICLES.items():
        write(kb_dir, f"{id_}.md", article_text(id_, qs, category=f"cat-{id_}"))
    kb = KnowledgeBase(
        kb_dir,
        category_keywords={"cat-billing": {"en": ("refund", "charged twice")},
                           "cat-network": {"ru": ("интернет",)}},
    )
    assert kb.detect_category("vpn does not connect")[0] == "cat-vpn"
    cat, score = kb.detect_category("I was charged twice, want a refund")
    assert cat == "cat-billing" and score >= 0.5
    assert kb.detect_category("пропал интернет", "ru")[0] == "cat-network"
    assert kb.detect_category("hmm")[0] is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reload_if_changed(kb_dir: Path) -> None:
    write(kb_dir, "a.md", article_text("a", ["vpn does not connect"]))
    clock = FakeClock()
    kb = KnowledgeBase(kb_dir, clock=clock, check_interval=5)
    assert set(kb.articles) == {"a"}
    write(kb_dir, "b.md", article_text("b", ["printer is jammed"]))
    assert kb.reload_if_changed() is False  # too soon: not even stat-ed
    clock.now = 10
    assert kb.reload_if_changed() is True
    assert set(kb.articles) == {"a", "b"}
    assert kb.search("printer jammed").results[0].article.id == "b"
    clock.now = 20
    assert kb.reload_if_changed() is False  # nothing changed
    (kb_dir / "b.md").unlink()
    clock.now = 30
    assert kb.reload_if_changed() is True and set(kb.articles) == {"a"}


def test_broken_edit_keeps_last_good_version(kb_dir: Path) -> None:
    p = write(kb_dir, "a.md", article_text("a", ["vpn does not connect"]))
    write(kb_dir, "b.md", article_text("b", ["printer is jammed"]))
    clock = FakeClock()
    kb = KnowledgeBase(kb_dir, clock=clock, check_interval=1)
    p.write_text("---\nid: a\ntitle: [broken\n---\nbody\n", encoding="utf-8")
    clock.now = 5
    assert kb.reload_if_changed() is True
    assert kb.problems and kb.problems[0].file == str(p)
    assert set(kb.articles) == {"a", "b"}  # "a" still served in its last good version
    assert kb.search("vpn does not connect").results[0].article.id == "a"


def test_without_lang_the_query_script_picks_the_language(kb: KnowledgeBase) -> None:
    assert all(x.article.lang == "ru" for x in kb.search("забыл пароль").results)
    assert kb.search("pf,sk gfhjkm").results[0].article.id == "ru-password"
    assert all(x.article.lang == "en" for x in kb.search("forgot password").results)
