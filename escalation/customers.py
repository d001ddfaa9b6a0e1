"""The customer directory: platform user -> organisation -> license tier.

Loaded from ``customers.yaml``; ``firstline customers import`` adds entries to the database,
which win over the file. Unknown users get the SLA config's default tier.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from config.problems import ContentError, Problem
from config.yamlfile import load_yaml

PLATFORMS = ("telegram", "slack", "console", "memory")


@dataclass(frozen=True)
class CustomerEntry:
    """Which organisation a platform user belongs to, and its tier."""

    organisation: str
    tier: str


@dataclass
class CustomerDirectory:
    """Lookup of ``(platform, user_id)`` in the bundled or admin-provided file."""

    entries: dict[tuple[str, str], CustomerEntry] = field(default_factory=dict)

    def lookup(self, platform: str, user_id: str) -> CustomerEntry | None:
        """The entry for the user, if the directory knows them."""
        return self.entries.get((platform, user_id))


def load_customers(
    path: Path, tiers: set[str] | None
) -> tuple[CustomerDirectory | None, list[Problem]]:
    """Read ``customers.yaml``; a missing file is an empty directory, not an error."""
    if not path.exists():
        return CustomerDirectory(), []
    doc, problems = load_yaml(path)
    if doc is None:
        return None, problems
    directory = CustomerDirectory()
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        return None, [doc.problem((), "expected a mapping with an 'organisations' list")]
    orgs = data.get("organisations", [])
    if not isinstance(orgs, list):
        return None, [doc.problem(("organisations",), "expected a list")]
    seen: dict[tuple[str, str], str] = {}
    for i, org in enumerate(orgs):
        base: tuple[str | int, ...] = ("organisations", i)
        if not isinstance(org, dict):
            problems.append(doc.problem(base, "expected a mapping"))
            continue
        name = org.get("name") or org.get("id")
        if not isinstance(name, str) or not name.strip():
            problems.append(doc.problem((*base, "name"), "missing organisation name"))
            continue
        tier = org.get("tier")
        if not isinstance(tier, str) or (tiers is not None and tier not in tiers):
            known = ", ".join(sorted(tiers)) if tiers else "?"
            problems.append(doc.problem((*base, "tier"), f"unknown tier {tier!r} (known: {known})"))
            continue
        members = org.get("members", [])
        if not isinstance(members, list):
            problems.append(doc.problem((*base, "members"), "expected a list"))
            continue
        for j, m in enumerate(members):
            mpath = (*base, "members", j)
            if not isinstance(m, dict):
                problems.append(doc.problem(mpath, "expected {platform: ..., user_id: ...}"))
                continue
            platform, user_id = m.get("platform"), m.get("user_id")
            if platform not in PLATFORMS:
                problems.append(doc.problem((*mpath, "platform"), f"unknown platform {platform!r}"))
                continue
            if user_id is None or str(user_id).strip() == "":
                problems.append(doc.problem((*mpath, "user_id"), "missing user_id"))
                continue
            key = (str(platform), str(user_id))
            if key in seen:
                problems.append(
                    doc.problem(mpath, f"{platform}:{user_id} is already a member of {seen[key]}")
                )
                continue
            seen[key] = name
            directory.entries[key] = CustomerEntry(organisation=name, tier=tier)
    return directory, problems


def import_rows(path: Path, tiers: set[str]) -> list[tuple[str, str, str, str]]:
    """Rows ``(platform, user_id, organisation, tier)`` from a YAML directory file or a CSV
    with those columns; raises :class:`ContentError` listing every bad line."""
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, tiers)
    directory, problems = load_customers(path, tiers)
    if not path.exists():
        problems = [Problem(str(path), None, "", "file not found")]
    if directory is None or problems:
        raise ContentError(problems)
    return [(p, u, e.organisation, e.tier) for (p, u), e in directory.entries.items()]


def _csv_rows(path: Path, tiers: set[str]) -> list[tuple[str, str, str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    rows: list[tuple[str, str, str, str]] = []
    problems: list[Problem] = []
    reader = csv.DictReader(io.StringIO(text))
    needed = {"platform", "user_id", "organisation", "tier"}
    if not reader.fieldnames or not needed <= set(reader.fieldnames):
        raise ContentError([Problem(str(path), 1, "", f"header must have {sorted(needed)}")])
    for line_no, row in enumerate(reader, start=2):
        platform, user_id = (row.get("platform") or "").strip(), (row.get("user_id") or "").strip()
        org, tier = (row.get("organisation") or "").strip(), (row.get("tier") or "").strip()
        if platform not in PLATFORMS:
            problems.append(
                Problem(str(path), line_no, "platform", f"unknown platform {platform!r}")
            )
        elif not user_id or not org:
            problems.append(
                Problem(str(path), line_no, "user_id", "user_id and organisation are required")
            )
        elif tier not in tiers:
            problems.append(Problem(str(path), line_no, "tier", f"unknown tier {tier!r}"))
        else:
            rows.append((platform, user_id, org, tier))
    if problems:
        raise ContentError(problems)
    return rows
