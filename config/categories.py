"""Support categories and their checklists of typical user errors (admin-edited YAML)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.problems import Problem
from config.yamlfile import LocatedYaml, load_yaml

LANGS = ("en", "ru")

# Where a checklist option leads: another step id, or one of these.
GOTO_NEXT = "next"  # the following step (or escalation after the last one)
GOTO_SOLVED = "solved"  # the user fixed it: the bot deflected the problem
GOTO_ESCALATE = "escalate"  # skip the rest, collect details and hand to L2

# The three options every step has unless it lists its own.
DEFAULT_OPTION_IDS = ("fixed", "not_helped", "cant")

PRIORITIES = ("critical", "high", "normal", "low")


@dataclass(frozen=True)
class Text:
    """A string in every supported language."""

    en: str
    ru: str

    def get(self, lang: str) -> str:
        """The text in ``lang``, falling back to English."""
        return self.ru if lang == "ru" else self.en


@dataclass(frozen=True)
class ChecklistOption:
    """A button under a checklist step."""

    id: str
    label: Text
    goto: str = GOTO_NEXT
    # Raise the ticket's priority to at least this when chosen (e.g. "nothing works").
    priority: str | None = None


@dataclass(frozen=True)
class ChecklistStep:
    """One instruction of a checklist, with the buttons the user answers it with."""

    id: str
    text: Text
    options: tuple[ChecklistOption, ...]
    line: int | None = None


@dataclass(frozen=True)
class Category:
    """A support category: how it is called, how it is recognised, its checklist."""

    id: str
    title: Text
    description: Text
    checklist: tuple[ChecklistStep, ...]
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)  # lang -> words
    default_priority: str = "normal"
    l2_route: str | None = None  # a key of settings.escalation.routes
    line: int | None = None

    def step(self, step_id: str) -> ChecklistStep | None:
        """The step with ``step_id``, if any."""
        return next((s for s in self.checklist if s.id == step_id), None)

    def next_step(self, step_id: str) -> ChecklistStep | None:
        """The step after ``step_id``, or ``None`` after the last one."""
        ids = [s.id for s in self.checklist]
        if step_id not in ids:
            return None
        i = ids.index(step_id) + 1
        return self.checklist[i] if i < len(self.checklist) else None


# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------

# Ids travel in button callback data (Telegram allows 64 bytes in total): keep them short.
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Slack truncates button text at 75 characters; Telegram buttons get unreadable long before.
MAX_LABEL_LEN = 75
# A step is read on a phone: one screen, not an article.
MAX_STEP_TEXT_LEN = 700
GOTO_TERMINALS = (GOTO_NEXT, GOTO_SOLVED, GOTO_ESCALATE)

_CATEGORY_KEYS = frozenset(
    {"id", "title", "description", "keywords", "default_priority", "l2_route", "checklist"}
)
_STEP_KEYS = frozenset({"id", "text", "options"})
_OPTION_KEYS = frozenset({"id", "label", "goto", "priority"})

Path_ = tuple[str | int, ...]


class _Validator:
    """Collects problems while turning the parsed YAML into dataclasses."""

    def __init__(self, doc: LocatedYaml) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def report(self, path: Path_, message: str) -> None:
        """Record a problem at ``path``."""
        self.problems.append(self.doc.problem(path, message))

    # ---- scalars -----------------------------------------------------------------

    def string(self, value: Any, path: Path_) -> str | None:
        """A non-empty string at ``path`` (``None`` and a problem if it is not one)."""
        if value is None:
            self.report(path, "is required")
            return None
        if isinstance(value, bool):
            self.report(
                path,
                "must be a string, not a boolean (YAML reads unquoted yes/no/on/off as "
                'true/false: put the text in quotes, e.g. "no")',
            )
            return None
        if not isinstance(value, str):
            self.report(path, f"must be a string, not {_type_name(value)}")
            return None
        if not value.strip():
            self.report(path, "must not be empty")
            return None
        return value.strip()

    def ident(self, value: Any, path: Path_) -> str | None:
        """An id: lowercase letters, digits, ``_`` and ``-``, at most 32 characters."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = self.string(value, path)
        if text is None:
            return None
        if not ID_RE.match(text):
            self.report(
                path,
                f"invalid id {text!r}: use 1-32 lowercase latin letters, digits, '_' or '-'",
            )
            return None
        return text

    def text(self, value: Any, path: Path_, *, max_len: int | None = None) -> Text | None:
        """A :class:`Text`: a mapping with a non-empty string for every language."""
        if value is None:
            self.report(path, f"is required (a mapping with {', '.join(LANGS)})")
            return None
        if not isinstance(value, dict):
            self.report(
                path,
                f"must be a mapping of languages ({', '.join(LANGS)}), not {_type_name(value)}",
            )
            return None
        for key in value:
            if key not in LANGS:
                self.report(
                    (*path, str(key)), f"unknown language {key!r}; expected {', '.join(LANGS)}"
                )
        texts: dict[str, str] = {}
        for lang in LANGS:
            if lang not in value:
                self.report(path, f"the {lang!r} text is missing")
                continue
            s = self.string(value[lang], (*path, lang))
            if s is None:
                continue
            if max_len is not None and len(s) > max_len:
                self.report((*path, lang), f"is {len(s)} characters long; keep it under {max_len}")
            texts[lang] = s
        if len(texts) != len(LANGS):
            return None
        return Text(en=texts["en"], ru=texts["ru"])

    def priority(self, value: Any, path: Path_) -> str | None:
        """One of :data:`PRIORITIES`."""
        s = self.string(value, path)
        if s is None:
            return None
        if s not in PRIORITIES:
            self.report(path, f"unknown priority {s!r}; expected one of {', '.join(PRIORITIES)}")
            return None
        return s

    def unknown_keys(self, value: dict[Any, Any], allowed: frozenset[str], path: Path_) -> None:
        """Report keys that are not in ``allowed`` (usually typos that would be ignored)."""
        for key in value:
            if str(key) not in allowed:
                self.report(
                    (*path, str(key)),
                    f"unknown key {key!r}; expected one of {', '.join(sorted(allowed))}",
                )

    def duplicate_ids(self, items: list[Any], path: Path_, what: str) -> set[int]:
        """Report items whose ``id`` repeats an earlier item's; return the repeats' indexes.

        Checked on the raw items, so a duplicate is reported even when the item has other
        problems too.
        """
        first: dict[str, int] = {}
        repeats: set[int] = set()
        for i, item in enumerate(items):
            raw = _raw_id(item)
            if raw is None:
                continue
            if raw in first:
                where = ".".join(str(k) for k in (*path, first[raw]))
                self.report((*path, i, "id"), f"duplicate {what} id {raw!r} (first at {where})")
                repeats.add(i)
            else:
                first[raw] = i
        return repeats

    # ---- structure ---------------------------------------------------------------

    def document(self) -> list[Category]:
        """The whole file: ``{categories: [...]}``."""
        data = self.doc.data
        if data is None:
            self.report((), "the file is empty; expected a 'categories' list")
            return []
        if not isinstance(data, dict):
            self.report(
                (), f"the file must be a mapping with a 'categories' list, not {_type_name(data)}"
            )
            return []
        self.unknown_keys(data, frozenset({"categories", "version"}), ())
        raw = data.get("categories")
        if raw is None:
            self.report(("categories",), "is required (a list of categories)")
            return []
        if not isinstance(raw, list):
            self.report(("categories",), f"must be a list, not {_type_name(raw)}")
            return []
        if not raw:
            self.report(("categories",), "must contain at least one category")
            return []
        repeats = self.duplicate_ids(raw, ("categories",), "category")
        categories: list[Category] = []
        for i, item in enumerate(raw):
            cat = self.category(item, ("categories", i))
            if cat is not None and i not in repeats:
                categories.append(cat)
        return categories

    def category(self, value: Any, path: Path_) -> Category | None:
        """One category; ``None`` when it is too broken to use."""
        if not isinstance(value, dict):
            self.report(path, f"a category must be a mapping, not {_type_name(value)}")
            return None
        self.unknown_keys(value, _CATEGORY_KEYS, path)
        before = len(self.problems)
        cat_id = self.ident(value.get("id"), (*path, "id"))
        title = self.text(value.get("title"), (*path, "title"))
        description = self.text(value.get("description"), (*path, "description"))
        keywords = self.keywords(value.get("keywords"), (*path, "keywords"))
        priority = "normal"
        if value.get("default_priority") is not None:
            priority = (
                self.priority(value["default_priority"], (*path, "default_priority")) or priority
            )
        l2_route = None
        if value.get("l2_route") is not None:
            l2_route = self.string(value["l2_route"], (*path, "l2_route"))
        checklist = self.checklist(value.get("checklist"), (*path, "checklist"))
        if len(self.problems) > before or cat_id is None or title is None or description is None:
            return None
        return Category(
            id=cat_id,
            title=title,
            description=description,
            checklist=checklist,
            keywords=keywords,
            default_priority=priority,
            l2_route=l2_route,
            line=self.doc.line(*path),
        )

    def keywords(self, value: Any, path: Path_) -> dict[str, tuple[str, ...]]:
        """``{lang: [word, ...]}``; optional, but when present every language is listed."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.report(
                path, f"must be a mapping of languages to lists of words, not {_type_name(value)}"
            )
            return {}
        for key in value:
            if key not in LANGS:
                self.report(
                    (*path, str(key)), f"unknown language {key!r}; expected {', '.join(LANGS)}"
                )
        result: dict[str, tuple[str, ...]] = {}
        for lang in LANGS:
            if lang not in value:
                self.report(path, f"the {lang!r} keywords are missing")
                continue
            words = value[lang]
            if not isinstance(words, list):
                self.report((*path, lang), f"must be a list of words, not {_type_name(words)}")
                continue
            clean: list[str] = []
            for j, word in enumerate(words):
                if isinstance(word, int | float) and not isinstance(word, bool):
                    word = str(word)  # `429` in YAML is a number; as a keyword it is a word
                s = self.string(word, (*path, lang, j))
                if s is not None:
                    clean.append(s)
            result[lang] = tuple(clean)
        return result

    def checklist(self, value: Any, path: Path_) -> tuple[ChecklistStep, ...]:
        """The steps, with ids unique, every goto resolved, no loops and no dead steps."""
        if value is None:
            self.report(path, "is required (a list of steps)")
            return ()
        if not isinstance(value, list):
            self.report(path, f"must be a list of steps, not {_type_name(value)}")
            return ()
        if not value:
            self.report(path, "must contain at least one step")
            return ()
        repeats = self.duplicate_ids(value, path, "step")
        known = {raw for item in value if (raw := _raw_id(item)) is not None}
        steps: list[ChecklistStep] = []
        paths: dict[str, Path_] = {}
        ok = not repeats
        for j, item in enumerate(value):
            step_path: Path_ = (*path, j)
            step = self.step(item, step_path)
            if step is None or j in repeats:
                ok = False
                continue
            paths[step.id] = step_path
            steps.append(step)
            for k, opt in enumerate(step.options):
                if opt.goto not in GOTO_TERMINALS and opt.goto not in known:
                    ok = False
                    self.report(
                        (*step_path, "options", k, "goto"),
                        f"unknown goto target {opt.goto!r}: use next, solved, escalate "
                        "or a step id of this checklist",
                    )
        if ok:  # the flow can only be judged on a complete, resolved checklist
            self.flow(steps, paths)
        return tuple(steps)

    def flow(self, steps: list[ChecklistStep], paths: dict[str, Path_]) -> None:
        """Every path through the checklist must end, and every step must be reachable.

        Any cycle is rejected, even one with a way out: a checklist is a short walk to
        "solved" or "escalate", and a user must never be sent back to a step already seen.
        """
        graph = _edges(steps)
        by_id = {step.id: step for step in steps}
        state: dict[str, int] = {}  # 1 = on the current DFS path, 2 = done
        reported: set[frozenset[str]] = set()

        # Iterative DFS (an admin may write a very long checklist: no recursion limit).
        for start in (step.id for step in steps):
            if start in state:
                continue
            state[start] = 1
            trail = [start]
            stack = [iter(graph[start])]
            while stack:
                edge = next(stack[-1], None)
                if edge is None:
                    state[trail.pop()] = 2
                    stack.pop()
                    continue
                target, k = edge
                node = trail[-1]
                if state.get(target) == 1:
                    loop = [*trail[trail.index(target) :], target]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        # Report at the option that closes the loop (the step for defaults).
                        where: Path_ = paths[node]
                        if by_id[node].options is not DEFAULT_OPTIONS:
                            where = (*paths[node], "options", k, "goto")
                        shown = loop if len(loop) <= 9 else [*loop[:4], "...", *loop[-4:]]
                        self.report(
                            where,
                            "goto loop " + " -> ".join(shown) + ": the checklist would never end",
                        )
                elif target not in state:
                    state[target] = 1
                    trail.append(target)
                    stack.append(iter(graph[target]))

        reachable = _reachable(steps[0].id, graph)
        for step in steps:
            if step.id not in reachable:
                self.report(
                    (*paths[step.id], "id"),
                    f"step {step.id!r} can never be reached from the first step",
                )

    def step(self, value: Any, path: Path_) -> ChecklistStep | None:
        """One step; without ``options`` it gets the default three buttons."""
        if not isinstance(value, dict):
            self.report(path, f"a step must be a mapping, not {_type_name(value)}")
            return None
        self.unknown_keys(value, _STEP_KEYS, path)
        before = len(self.problems)
        step_id = self.ident(value.get("id"), (*path, "id"))
        if step_id in GOTO_TERMINALS:
            self.report((*path, "id"), f"{step_id!r} is a reserved goto word; rename the step")
            step_id = None
        text = self.text(value.get("text"), (*path, "text"), max_len=MAX_STEP_TEXT_LEN)
        options = self.options(value.get("options"), (*path, "options"))
        if len(self.problems) > before or step_id is None or text is None or options is None:
            return None
        return ChecklistStep(id=step_id, text=text, options=options, line=self.doc.line(*path))

    def options(self, value: Any, path: Path_) -> tuple[ChecklistOption, ...] | None:
        """A step's own buttons, or the defaults when the key is absent."""
        if value is None:
            return DEFAULT_OPTIONS
        if not isinstance(value, list):
            self.report(path, f"must be a list of options, not {_type_name(value)}")
            return None
        if not value:
            self.report(path, "must contain at least one option (or leave it out for the defaults)")
            return None
        repeats = self.duplicate_ids(value, path, "option")
        result: list[ChecklistOption] = []
        for k, item in enumerate(value):
            opt = self.option(item, (*path, k))
            if opt is not None and k not in repeats:
                result.append(opt)
        return tuple(result) if len(result) == len(value) else None

    def option(self, value: Any, path: Path_) -> ChecklistOption | None:
        """One button: ``id``, ``label``, ``goto`` (default ``next``), optional ``priority``."""
        if not isinstance(value, dict):
            self.report(path, f"an option must be a mapping, not {_type_name(value)}")
            return None
        self.unknown_keys(value, _OPTION_KEYS, path)
        before = len(self.problems)
        opt_id = self.ident(value.get("id"), (*path, "id"))
        label = self.text(value.get("label"), (*path, "label"), max_len=MAX_LABEL_LEN)
        goto: str | None = GOTO_NEXT
        if "goto" in value:
            goto = self.ident(value["goto"], (*path, "goto"))
        priority = None
        if value.get("priority") is not None:
            priority = self.priority(value["priority"], (*path, "priority"))
        if len(self.problems) > before or opt_id is None or label is None or goto is None:
            return None
        return ChecklistOption(id=opt_id, label=label, goto=goto, priority=priority)


# The buttons of a step without its own options. The labels are placeholders: the bot
# shows its own translated strings for these ids.
DEFAULT_OPTIONS: tuple[ChecklistOption, ...] = (
    ChecklistOption(DEFAULT_OPTION_IDS[0], Text("Fixed it", "Помогло"), GOTO_SOLVED),
    ChecklistOption(DEFAULT_OPTION_IDS[1], Text("Didn't help", "Не помогло"), GOTO_NEXT),
    ChecklistOption(DEFAULT_OPTION_IDS[2], Text("I can't do this", "Не могу сделать"), GOTO_NEXT),
)


def _edges(steps: list[ChecklistStep]) -> dict[str, list[tuple[str, int]]]:
    """Step id -> (target step id, index of the option leading there) for every option."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, step in enumerate(steps):
        out: list[tuple[str, int]] = []
        for k, opt in enumerate(step.options):
            if opt.goto == GOTO_NEXT:
                if i + 1 < len(steps):
                    out.append((steps[i + 1].id, k))
            elif opt.goto not in GOTO_TERMINALS:
                out.append((opt.goto, k))
        graph[step.id] = out
    return graph


def _reachable(start: str, graph: dict[str, list[tuple[str, int]]]) -> set[str]:
    """Steps reachable from ``start``."""
    seen = {start}
    stack = [start]
    while stack:
        for target, _ in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _raw_id(item: Any) -> str | None:
    """The ``id`` of a raw list item when it is a well-formed id, else ``None``."""
    if not isinstance(item, dict):
        return None
    value = item.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and ID_RE.match(value.strip()):
        return value.strip()
    return None


def _type_name(value: Any) -> str:
    """A YAML-ish name of a value's type for messages."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def load_categories(path: Path) -> tuple[list[Category], list[Problem]]:
    """Load and validate ``categories.yaml``; every problem is reported, none is fatal here.

    Returns the categories that are valid and every problem found (file, line, key).
    Never raises on bad input: a missing file, non-UTF-8 bytes or broken YAML are problems.
    """
    doc, problems = load_yaml(path)
    if doc is None:
        return [], problems
    validator = _Validator(doc)
    categories = validator.document()
    return categories, [*problems, *validator.problems]


def default_categories_path() -> Path:
    """The bundled ``categories.yaml``."""
    return Path(__file__).parent / "defaults" / "categories.yaml"
