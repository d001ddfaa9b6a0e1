"""All admin-edited content, loaded and validated together.

``firstline check-config`` and the start-up of the bot both call :func:`load_content`, so an
admin sees the same messages in both places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.categories import Category, load_categories
from config.problems import Problem
from config.settings import Settings
from escalation.customers import CustomerDirectory, load_customers
from escalation.policy import SlaConfig, load_sla


@dataclass
class Content:
    """Categories with checklists, SLA policies and calendars, the customer directory."""

    categories: dict[str, Category]
    sla: SlaConfig
    customers: CustomerDirectory
    kb_dir: Path

    def category_keywords(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """category -> lang -> hint words, for category detection in free text."""
        return {c.id: dict(c.keywords) for c in self.categories.values()}


def load_content(settings: Settings) -> tuple[Content | None, list[Problem]]:
    """Load every content file named by ``settings``; return all problems found."""
    problems: list[Problem] = []
    cats, p = load_categories(settings.content.path("categories"))
    problems += p
    sla, p = load_sla(settings.content.path("sla"))
    problems += p
    customers, p = load_customers(
        settings.content.path("customers"), set(sla.tiers) if sla is not None else None
    )
    problems += p
    kb_dir = settings.kb.folder()
    if not kb_dir.is_dir():
        problems.append(Problem(str(kb_dir), None, "kb.dir", "KB folder not found"))
    for cat_id, route in settings.escalation.routes.items():
        if cat_id not in {c.id for c in cats}:
            problems.append(
                Problem("settings", None, f"escalation.routes.{cat_id}", "unknown category")
            )
        if ":" not in route:
            problems.append(
                Problem(
                    "settings",
                    None,
                    f"escalation.routes.{cat_id}",
                    "destination must look like 'telegram:-100123' or 'slack:C0123'",
                )
            )
    if problems or sla is None or customers is None:
        return None, problems
    return Content({c.id: c for c in cats}, sla, customers, kb_dir), problems
