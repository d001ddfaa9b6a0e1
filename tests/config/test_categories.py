"""The categories loader: the bundled file is valid, and broken files report every problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config.categories import (
    DEFAULT_OPTION_IDS,
    GOTO_ESCALATE,
    GOTO_NEXT,
    GOTO_SOLVED,
    LANGS,
    PRIORITIES,
    Category,
    default_categories_path,
    load_categories,
)
from config.problems import Problem

BUNDLED = default_categories_path()
REQUIRED_IDS = {"account", "billing", "server", "network", "email", "app"}


def write(tmp_path: Path, text: str) -> Path:
    """Write a dedented YAML document to ``categories.yaml`` and return its path."""
    path = tmp_path / "categories.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the ``occurrence``-th line containing ``needle``."""
    found = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            found += 1
            if found == occurrence:
                return number
    raise AssertionError(f"{needle!r} not found in {path}")


def by_key(problems: list[Problem]) -> dict[str, Problem]:
    """Problems indexed by key (the test files have one problem per key)."""
    return {p.key: p for p in problems}


# A minimal valid category, to be embedded in the broken documents below.
VALID = """
categories:
  - id: account
    title: {en: Account, ru: Аккаунт}
    description: {en: Sign-in problems, ru: Проблемы со входом}
    keywords:
      en: [login, password]
      ru: [вход, пароль]
    default_priority: normal
    l2_route: accounts
    checklist:
      - id: caps
        text: {en: Check Caps Lock, ru: Проверьте Caps Lock}
      - id: reset
        text: {en: Reset the password, ru: Сбросьте пароль}
        options:
          - id: no_mail
            label: {en: No e-mail, ru: Письма нет}
            goto: spam
          - id: fixed
            label: {en: Fixed, ru: Помогло}
            goto: solved
          - id: team
            label: {en: Whole team, ru: Вся команда}
            goto: escalate
            priority: critical
      - id: spam
        text: {en: Check Spam, ru: Проверьте спам}
"""


# ---------------------------------------------------------------------- the bundled file


@pytest.fixture(scope="module")
def bundled() -> list[Category]:
    """The bundled categories, asserting the file has no problems."""
    categories, problems = load_categories(BUNDLED)
    assert problems == [], "\n".join(str(p) for p in problems)
    return categories


def test_bundled_has_the_required_categories(bundled: list[Category]) -> None:
    ids = [c.id for c in bundled]
    assert len(ids) >= 6
    assert len(set(ids)) == len(ids)
    assert set(ids) >= REQUIRED_IDS


def test_bundled_checklists_have_three_to_six_steps(bundled: list[Category]) -> None:
    for cat in bundled:
        assert 3 <= len(cat.checklist) <= 6, cat.id


def test_bundled_texts_are_filled_in_both_languages(bundled: list[Category]) -> None:
    for cat in bundled:
        for text in (cat.title, cat.description):
            for lang in LANGS:
                assert text.get(lang).strip(), cat.id
        assert cat.title.en != cat.title.ru
        for lang in LANGS:
            assert cat.keywords.get(lang), (cat.id, lang)
        for step in cat.checklist:
            for lang in LANGS:
                assert len(step.text.get(lang)) >= 40, (cat.id, step.id, lang)
            assert step.text.en != step.text.ru
            for opt in step.options:
                for lang in LANGS:
                    assert opt.label.get(lang).strip()


def test_bundled_priorities_and_routes(bundled: list[Category]) -> None:
    for cat in bundled:
        assert cat.default_priority in PRIORITIES
        assert cat.l2_route
        for step in cat.checklist:
            for opt in step.options:
                assert opt.priority is None or opt.priority in PRIORITIES
    # A "nothing works for everyone" button exists somewhere and raises to critical.
    assert any(
        opt.priority == "critical" for c in bundled for s in c.checklist for opt in s.options
    )


def test_bundled_branches_resolve(bundled: list[Category]) -> None:
    with_branches = 0
    for cat in bundled:
        ids = {s.id for s in cat.checklist}
        has_branch = False
        for step in cat.checklist:
            assert step.line is not None
            for opt in step.options:
                if opt.goto not in (GOTO_NEXT, GOTO_SOLVED, GOTO_ESCALATE):
                    assert opt.goto in ids, (cat.id, step.id, opt.id)
                    has_branch = True
        with_branches += has_branch
    assert with_branches >= 3


def test_bundled_every_checklist_can_solve_and_escalate(bundled: list[Category]) -> None:
    for cat in bundled:
        gotos = {opt.goto for s in cat.checklist for opt in s.options}
        assert GOTO_SOLVED in gotos, cat.id
        # Escalation: explicitly, or by running past the last step.
        assert GOTO_ESCALATE in gotos or GOTO_NEXT in {o.goto for o in cat.checklist[-1].options}


def test_steps_without_options_get_the_defaults(bundled: list[Category]) -> None:
    account = next(c for c in bundled if c.id == "account")
    caps = account.step("caps_lock")
    assert caps is not None
    assert tuple(o.id for o in caps.options) == DEFAULT_OPTION_IDS
    assert caps.options[0].goto == GOTO_SOLVED
    assert account.next_step("caps_lock") == account.checklist[1]


def test_valid_minimal_document(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    categories, problems = load_categories(path)
    assert problems == []
    (cat,) = categories
    assert cat.id == "account"
    assert cat.title.get("ru") == "Аккаунт"
    assert cat.keywords == {"en": ("login", "password"), "ru": ("вход", "пароль")}
    assert cat.l2_route == "accounts"
    assert cat.line == line_of(path, "- id: account")
    reset = cat.step("reset")
    assert reset is not None
    assert reset.line == line_of(path, "- id: reset")
    assert [o.goto for o in reset.options] == ["spam", "solved", "escalate"]
    assert reset.options[2].priority == "critical"


# --------------------------------------------------------------------- broken documents


def test_missing_file(tmp_path: Path) -> None:
    categories, problems = load_categories(tmp_path / "nope.yaml")
    assert categories == []
    assert len(problems) == 1
    assert "not found" in problems[0].message
    assert problems[0].file.endswith("nope.yaml")


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "categories.yaml"
    path.write_bytes("categories:\n  - id: счета\n".encode("cp1251"))
    categories, problems = load_categories(path)
    assert categories == []
    assert len(problems) == 1
    assert "UTF-8" in problems[0].message


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: {en: Account, ru: Аккаунт
            description: x
        """,
    )
    categories, problems = load_categories(path)
    assert categories == []
    assert len(problems) == 1
    assert problems[0].message.startswith("invalid YAML")
    assert problems[0].line is not None
    assert 3 <= problems[0].line <= 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("- a\n- b\n", "mapping"),
        ("version: 1\n", "is required"),
        ("categories: {}\n", "must be a list"),
        ("categories: []\n", "at least one"),
    ],
)
def test_wrong_top_level(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "categories.yaml"
    path.write_text(text, encoding="utf-8")
    categories, problems = load_categories(path)
    assert categories == []
    assert len(problems) == 1
    assert message in problems[0].message
    assert problems[0].file == str(path)


def test_missing_and_empty_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: {en: Account}
            description: {en: "", ru: Вход}
            checklist:
              - id: caps
                text:
                  en: Check Caps Lock
              - text: {en: Reset, ru: Сбросьте}
        """,
    )
    categories, problems = load_categories(path)
    assert categories == []
    found = by_key(problems)
    assert found["categories.0.title"].line == line_of(path, "title:")
    assert "'ru' text is missing" in found["categories.0.title"].message
    assert found["categories.0.description.en"].line == line_of(path, "description:")
    assert "empty" in found["categories.0.description.en"].message
    assert found["categories.0.checklist.0.text"].line == line_of(path, "text:")
    assert "'ru'" in found["categories.0.checklist.0.text"].message
    assert found["categories.0.checklist.1.id"].line == line_of(path, "- text:")
    assert "required" in found["categories.0.checklist.1.id"].message
    assert len(problems) == 4


def test_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: Account
            description: {en: d, ru: д}
            keywords: {en: login, ru: [вход, [x]]}
            checklist:
              - id: caps
                text: {en: [a], ru: б}
                options: {id: x}
          - just a string
        """,
    )
    _, problems = load_categories(path)
    found = by_key(problems)
    assert "mapping of languages" in found["categories.0.title"].message
    assert found["categories.0.title"].line == line_of(path, "title:")
    assert "list of words" in found["categories.0.keywords.en"].message
    assert found["categories.0.keywords.ru.1"].line == line_of(path, "keywords:")
    assert "must be a string" in found["categories.0.checklist.0.text.en"].message
    assert "list of options" in found["categories.0.checklist.0.options"].message
    assert found["categories.0.checklist.0.options"].line == line_of(path, "options:")
    assert "must be a mapping" in found["categories.1"].message
    assert found["categories.1"].line == line_of(path, "- just a string")


def test_unknown_language_priority_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: {en: Account, ru: Аккаунт, de: Konto}
            description: {en: d, ru: д}
            default_priority: urgent
            defualt_route: x
            checklist:
              - id: caps
                text: {en: a, ru: б}
                options:
                  - id: all
                    label: {en: All, ru: Все}
                    goto: escalate
                    priority: blocker
        """,
    )
    categories, problems = load_categories(path)
    assert categories == []
    found = by_key(problems)
    assert "unknown language 'de'" in found["categories.0.title.de"].message
    assert "unknown priority 'urgent'" in found["categories.0.default_priority"].message
    assert found["categories.0.default_priority"].line == line_of(path, "default_priority:")
    assert "unknown key 'defualt_route'" in found["categories.0.defualt_route"].message
    assert found["categories.0.defualt_route"].line == line_of(path, "defualt_route:")
    key = "categories.0.checklist.0.options.0.priority"
    assert "unknown priority 'blocker'" in found[key].message
    assert found[key].line == line_of(path, "priority: blocker")
    assert len(problems) == 4


def test_duplicate_ids(tmp_path: Path) -> None:
    doc = VALID + textwrap.indent(
        textwrap.dedent(
            """
            - id: account
              title: {en: Again, ru: Снова}
              description: {en: d, ru: д}
              checklist:
                - id: one
                  text: {en: a, ru: б}
                - id: one
                  text: {en: c, ru: в}
                  options:
                    - {id: x, label: {en: X, ru: Х}, goto: solved}
                    - {id: x, label: {en: Y, ru: У}, goto: escalate}
            """
        ),
        "  ",
    )
    path = write(tmp_path, doc)
    categories, problems = load_categories(path)
    assert [c.id for c in categories] == ["account"]  # the first, valid one survives
    found = by_key(problems)
    assert "duplicate category id 'account'" in found["categories.1.id"].message
    assert found["categories.1.id"].line == line_of(path, "- id: account", 2)
    step_key = "categories.1.checklist.1.id"
    assert "duplicate step id 'one'" in found[step_key].message
    assert "categories.1.checklist.0" in found[step_key].message
    assert found[step_key].line == line_of(path, "- id: one", 2)
    opt_key = "categories.1.checklist.1.options.1.id"
    assert "duplicate option id 'x'" in found[opt_key].message
    assert found[opt_key].line == line_of(path, "{id: x, label: {en: Y")
    assert len(problems) == 3


def test_unknown_goto_target(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("goto: spam", "goto: spma"))
    categories, problems = load_categories(path)
    assert categories == []
    (problem,) = problems
    assert problem.key == "categories.0.checklist.1.options.0.goto"
    assert "unknown goto target 'spma'" in problem.message
    assert problem.line == line_of(path, "goto: spma")
    assert str(problem).startswith(f"{path}:{problem.line} [{problem.key}]")


def test_invalid_ids(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("- id: caps", "- id: Caps Lock"))
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.0.id"
    assert "invalid id" in problem.message


def test_empty_checklist_and_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: {en: A, ru: А}
            description: {en: d, ru: д}
            checklist: []
          - id: billing
            title: {en: B, ru: Б}
            description: {en: d, ru: д}
          - id: app
            title: {en: C, ru: В}
            description: {en: d, ru: д}
            checklist:
              - id: one
                text: {en: a, ru: б}
                options: []
        """,
    )
    categories, problems = load_categories(path)
    assert categories == []
    found = by_key(problems)
    assert "at least one step" in found["categories.0.checklist"].message
    assert found["categories.0.checklist"].line == line_of(path, "checklist: []")
    assert "is required" in found["categories.1.checklist"].message
    assert found["categories.1.checklist"].line == line_of(path, "- id: billing")
    assert "at least one option" in found["categories.2.checklist.0.options"].message
    assert len(problems) == 3


def test_label_too_long(tmp_path: Path) -> None:
    long = "x" * 80
    path = write(
        tmp_path, VALID.replace("{en: No e-mail, ru: Письма нет}", f"{{en: {long}, ru: ок}}")
    )
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.1.options.0.label.en"
    assert "75" in problem.message


CYCLE = """
categories:
  - id: server
    title: {en: Server, ru: Сервер}
    description: {en: d, ru: д}
    checklist:
      - id: a
        text: {en: a, ru: а}
        options:
          - {id: go, label: {en: Go, ru: Дальше}, goto: b}
          - {id: ok, label: {en: Ok, ru: Ок}, goto: solved}
      - id: b
        text: {en: b, ru: б}
      - id: c
        text: {en: c, ru: в}
        options:
          - {id: back, label: {en: Back, ru: Назад}, goto: a}
          - {id: up, label: {en: Up, ru: Выше}, goto: escalate}
"""


def test_goto_cycle_is_detected(tmp_path: Path) -> None:
    path = write(tmp_path, CYCLE)
    categories, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.2.options.0.goto"
    assert problem.line == line_of(path, "goto: a}")
    assert "a -> b -> c -> a" in problem.message
    assert "never end" in problem.message
    # A category with problems is left out; the caller refuses to start anyway.
    assert categories == []


def test_self_loop_is_detected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("goto: spam", "goto: reset"))
    _, problems = load_categories(path)
    loop, dead = problems
    assert loop.key == "categories.0.checklist.1.options.0.goto"
    assert "reset -> reset" in loop.message
    # ...and "spam", reachable only through that option, is now a dead step.
    assert dead.key == "categories.0.checklist.2.id"
    assert "never be reached" in dead.message


def test_forward_branches_are_not_cycles(tmp_path: Path) -> None:
    # A diamond: a -> b, a -> c, b -> c (skipping ahead twice is fine).
    path = write(tmp_path, CYCLE.replace("goto: a}", "goto: solved}"))
    categories, problems = load_categories(path)
    assert problems == []
    assert len(categories) == 1


def test_unreachable_step(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: app
            title: {en: App, ru: Приложение}
            description: {en: d, ru: д}
            checklist:
              - id: a
                text: {en: a, ru: а}
                options:
                  - {id: ok, label: {en: Ok, ru: Ок}, goto: solved}
                  - {id: "no", label: {en: "No", ru: Нет}, goto: escalate}
              - id: orphan
                text: {en: b, ru: б}
        """,
    )
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.1.id"
    assert "never be reached" in problem.message
    assert problem.line == line_of(path, "- id: orphan")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        categories:
          - id: account
            title: {en: A}
            description: {en: d, ru: д}
            checklist: []
          - id: billing
            title: {en: B, ru: Б}
            description: {en: d, ru: д}
            default_priority: asap
            checklist:
              - id: one
                text: {en: a, ru: б}
                options:
                  - {id: x, label: {en: X, ru: Х}, goto: nowhere}
        """,
    )
    _, problems = load_categories(path)
    assert {p.key for p in problems} == {
        "categories.0.title",
        "categories.0.checklist",
        "categories.1.default_priority",
        "categories.1.checklist.0.options.0.goto",
    }
    assert all(p.file == str(path) and p.line is not None for p in problems)


def test_yaml_booleans_get_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{en: No e-mail, ru: Письма нет}", "{en: No, ru: Нет}"))
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.1.options.0.label.en"
    assert "quotes" in problem.message


def test_numbers_in_keywords_are_words(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("en: [login, password]", "en: [login, 429]"))
    categories, problems = load_categories(path)
    assert problems == []
    assert categories[0].keywords["en"] == ("login", "429")


def test_reserved_step_id(tmp_path: Path) -> None:
    path = write(
        tmp_path, VALID.replace("- id: spam", "- id: solved").replace("goto: spam", "goto: next")
    )
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.2.id"
    assert "reserved" in problem.message
    assert problem.line == line_of(path, "- id: solved")


def test_long_checklist_with_a_loop(tmp_path: Path) -> None:
    """No recursion limit: thousands of steps are checked, and a far loop is found."""
    steps = [f"      - id: s{i}\n        text: {{en: t, ru: т}}\n" for i in range(1200)]
    steps[-1] += (
        "        options:\n          - {id: back, label: {en: Back, ru: Назад}, goto: s0}\n"
    )
    doc = (
        "categories:\n  - id: app\n    title: {en: A, ru: А}\n"
        "    description: {en: d, ru: д}\n    checklist:\n" + "".join(steps)
    )
    path = tmp_path / "categories.yaml"
    path.write_text(doc, encoding="utf-8")
    _, problems = load_categories(path)
    (problem,) = problems
    assert problem.key == "categories.0.checklist.1199.options.0.goto"
    assert (
        "goto loop s0 -> s1 -> s2 -> s3 -> ... -> s1197 -> s1198 -> s1199 -> s0" in problem.message
    )
