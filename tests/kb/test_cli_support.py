import json
from pathlib import Path

from config.problems import Problem
from kb.cli_support import check_lines, gaps_lines, search_lines
from kb.gaps import GapCluster
from kb.service import KnowledgeBase
from tests.kb.conftest import article_text, write


def _kb(kb_dir: Path) -> KnowledgeBase:
    write(kb_dir, "a.md", article_text("vpn", ["vpn does not connect"], title="VPN down"))
    write(kb_dir, "b.md", article_text("pw", ["I forgot my password"], title="Password"))
    return KnowledgeBase(kb_dir)


def test_search_json_lines(kb_dir: Path) -> None:
    lines = list(search_lines(_kb(kb_dir), ["vpn does not connect", "  ", "weather today"], True))
    assert len(lines) == 2  # blank questions are skipped
    first = json.loads(lines[0])
    assert set(first) == {"query", "decision", "results"}
    assert first["query"] == "vpn does not connect"
    assert first["decision"] in ("answer", "suggest")
    assert first["results"][0]["id"] == "vpn"
    assert set(first["results"][0]) == {"id", "score"}
    assert json.loads(lines[1])["decision"] == "none"


def test_search_text_lines(kb_dir: Path) -> None:
    text = "\n".join(search_lines(_kb(kb_dir), ["vpn does not connect"], False))
    assert "decision:" in text and "vpn" in text and "VPN down" in text


def test_check_lines() -> None:
    assert list(check_lines([])) == ["OK: no problems found"]
    out = list(check_lines([Problem("a.md", 3, "id", "duplicate id")]))
    assert out == ["a.md:3 [id]: duplicate id", "1 problem(s) found"]


def test_gaps_lines() -> None:
    cluster = GapCluster("export csv", 3, ("export csv", "csv export"), {"no_match": 3})
    out = list(gaps_lines([cluster]))
    assert out[0].strip().startswith("3") and "export csv" in out[0] and "~ csv export" in out[1]
    assert list(gaps_lines([])) == ["no gaps found"]
