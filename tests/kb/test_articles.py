from pathlib import Path

from kb.articles import load_articles
from tests.kb.conftest import article_text, write


def test_loads_valid_article_recursively(kb_dir: Path) -> None:
    write(
        kb_dir,
        "net/vpn.md",
        "---\nid: vpn\ntitle: VPN\ncategory: network\nlang: en\nquestions:\n  - vpn down\n"
        "tags: [vpn]\nlinks:\n  - https://a.example/x\n  - {title: Guide, url: https://b.example}\n"
        "---\n\n**Restart** the client.\n",
    )
    arts, problems = load_articles(kb_dir, {"network"})
    assert problems == []
    (a,) = arts
    assert (a.id, a.title, a.category, a.lang) == ("vpn", "VPN", "network", "en")
    assert a.questions == ("vpn down",)
    assert a.body == "**Restart** the client."
    assert a.tags == ("vpn",)
    assert a.links == ("https://a.example/x", "https://b.example")
    assert a.link_items[1].title == "Guide"
    assert a.line == 2 and a.path.endswith("vpn.md")


def test_missing_fields_and_bad_types_carry_lines(kb_dir: Path) -> None:
    write(kb_dir, "a.md", "---\nid: a\ntitle: A\nlang: de\nquestions: nope\n---\nbody\n")
    arts, problems = load_articles(kb_dir)
    assert arts == []
    by_key = {p.key: p for p in problems}
    assert "missing field 'category'" in by_key["category"].message
    assert by_key["lang"].line == 4 and "unknown lang" in by_key["lang"].message
    assert by_key["questions"].line == 5


def test_empty_questions_and_empty_body(kb_dir: Path) -> None:
    write(kb_dir, "a.md", "---\nid: a\ntitle: A\ncategory: c\nlang: en\nquestions: []\n---\n")
    _, problems = load_articles(kb_dir)
    msgs = " | ".join(p.message for p in problems)
    assert "at least one phrasing" in msgs and "empty body" in msgs


def test_yaml_error_line_is_the_md_line(kb_dir: Path) -> None:
    write(kb_dir, "bad.md", "---\nid: a\ntitle: [unclosed\ncategory: c\n---\nbody\n")
    _, problems = load_articles(kb_dir)
    (p,) = problems
    assert p.file.endswith("bad.md") and "invalid YAML" in p.message
    assert p.line is not None and p.line >= 3


def test_missing_front_matter_binary_and_non_utf8(kb_dir: Path) -> None:
    write(kb_dir, "plain.md", "just text\n")
    (kb_dir / "bin.md").write_bytes(b"\x00\x01\x02")
    (kb_dir / "latin.md").write_bytes("---\nid: é\n---\n".encode("latin-1"))
    write(kb_dir, "ok.md", article_text("ok", ["hello there"]))
    arts, problems = load_articles(kb_dir)
    assert [a.id for a in arts] == ["ok"]  # broken files never stop the others
    msgs = {Path(p.file).name: p.message for p in problems}
    assert "missing front matter" in msgs["plain.md"]
    assert "binary" in msgs["bin.md"]
    assert "UTF-8" in msgs["latin.md"]


def test_duplicate_ids_name_both_files(kb_dir: Path) -> None:
    write(kb_dir, "a.md", article_text("same", ["first question"]))
    write(kb_dir, "b.md", article_text("same", ["second question"]))
    arts, problems = load_articles(kb_dir)
    assert len(arts) == 1
    (p,) = problems
    assert p.file.endswith("b.md") and "a.md" in p.message and p.key == "id"


def test_unknown_category_and_colliding_phrasings(kb_dir: Path) -> None:
    write(kb_dir, "a.md", article_text("a", ["How do I reset my password?"], category="acct"))
    write(kb_dir, "b.md", article_text("b", ["how do i RESET my passwords"], category="x"))
    arts, problems = load_articles(kb_dir, {"acct"})
    assert {a.id for a in arts} == {"a", "b"}  # still served, but reported
    msgs = [p.message for p in problems]
    assert any("unknown category 'x'" in m for m in msgs)
    assert any("collides with article 'a'" in m for m in msgs)


def test_unknown_field_and_bad_link_are_reported_but_article_loads(kb_dir: Path) -> None:
    write(
        kb_dir,
        "a.md",
        "---\nid: a\ntitle: A\ncategory: c\nlang: en\nquestions: [q one]\n"
        "question: typo\nlinks: [not a url]\n---\nbody\n",
    )
    arts, problems = load_articles(kb_dir)
    assert [a.id for a in arts] == ["a"]
    assert {p.key for p in problems} == {"question", "links.0"}
    assert next(p for p in problems if p.key == "question").line == 7


def test_missing_folder(tmp_path: Path) -> None:
    arts, problems = load_articles(tmp_path / "nope")
    assert arts == [] and "not found" in problems[0].message
