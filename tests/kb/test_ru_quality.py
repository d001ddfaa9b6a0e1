"""Decision quality on a Russian test set against the bundled ru articles."""

from pathlib import Path

import pytest
import yaml

from kb.service import KnowledgeBase

ROOT = Path(__file__).resolve().parents[2]
KB_DIR = ROOT / "config" / "defaults" / "kb"
CASES = yaml.safe_load((Path(__file__).parent / "data" / "ru_queries.yaml").read_text("utf-8"))[
    "cases"
]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    if not KB_DIR.is_dir():
        pytest.skip("bundled KB not present")
    return KnowledgeBase(KB_DIR)


def test_bundled_kb_has_no_problems(kb: KnowledgeBase) -> None:
    assert kb.problems == []
    known = set(kb.articles)
    assert all(c["expect"] in known for c in CASES if c["expect"] is not None)


def test_ru_decision_quality(kb: KnowledgeBase) -> None:
    ins = [c for c in CASES if c["expect"] is not None]
    oos = [c for c in CASES if c["expect"] is None]
    top1 = shown = answered = answered_ok = 0
    for c in ins:
        r = kb.search(c["q"], "ru")
        ok = bool(r.results) and r.results[0].article.id == c["expect"]
        top1 += ok
        shown += ok and r.decision != "none"
        if r.decision == "answer":
            answered += 1
            answered_ok += ok
    oos_none = sum(kb.search(c["q"], "ru").decision == "none" for c in oos)
    assert top1 / len(ins) >= 0.9
    assert shown / len(ins) >= 0.85  # right article offered, not sent to "none"
    assert answered >= len(ins) // 2 and answered_ok / answered >= 0.95
    assert oos_none / len(oos) >= 0.8


@pytest.mark.parametrize("kind", ["typo", "form", "layout"])
def test_each_kind_of_noise_is_handled(kb: KnowledgeBase, kind: str) -> None:
    cases = [c for c in CASES if c["kind"] == kind]
    assert cases
    for c in cases:
        r = kb.search(c["q"], "ru")
        assert r.results[0].article.id == c["expect"], c["q"]
        assert r.decision != "none", c["q"]
