"""Every phrase of the bot and of the L2 desk exists in both languages, same placeholders."""

from __future__ import annotations

import string

import pytest

from bot.i18n import MESSAGES, t
from escalation.texts import L2_MESSAGES


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


@pytest.mark.parametrize("catalogue", [MESSAGES, L2_MESSAGES])
def test_both_languages_with_the_same_placeholders(catalogue: dict[str, dict[str, str]]) -> None:
    for key, entry in catalogue.items():
        assert set(entry) == {"en", "ru"}, key
        assert entry["en"].strip() and entry["ru"].strip(), key
        assert _fields(entry["en"]) == _fields(entry["ru"]), key


def test_unknown_language_falls_back_to_english() -> None:
    assert t("status_none", "de") == MESSAGES["status_none"]["en"]
    assert t("escalated", "ru", number="FL-1", eta="x").startswith("Заявка FL-1")
