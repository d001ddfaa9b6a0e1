"""Settings: env names, TOML file, precedence, secrets, and errors with file/line/key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.problems import ContentError
from config.settings import load_settings, parse_duration


def test_defaults_use_a_sqlite_file_and_the_bundled_content() -> None:
    s = load_settings(None)
    assert s.database.url.startswith("sqlite:///")
    assert s.kb.folder().is_dir()
    assert s.content.path("categories").is_file()
    assert s.telegram.bot_token is None and s.slack.bot_token is None


def test_flat_env_names_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:SECRET-TOKEN-VALUE")
    monkeypatch.setenv("TELEGRAM_L2_CHAT_ID", "-100200300")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("FIRSTLINE_ESCALATION__NOTE_PREFIX", "!!")
    s = load_settings(None)
    assert s.telegram.bot_token is not None
    assert s.telegram.bot_token.get_secret_value() == "123456:SECRET-TOKEN-VALUE"
    assert "SECRET-TOKEN-VALUE" not in repr(s) and "SECRET-TOKEN-VALUE" not in str(s)
    assert s.telegram.l2_chat_id == -100200300
    assert s.database.url == "postgresql+asyncpg://u@h/db"
    assert s.escalation.note_prefix == "!!"


def test_toml_file_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "firstline.toml"
    cfg.write_text(
        '[database]\nurl = "sqlite+aiosqlite:///from-file.db"\n\n'
        '[escalation]\nreopen_window = "2d 4h"\nticket_prefix = "SUP"\n',
        encoding="utf-8",
    )
    s = load_settings(cfg)
    assert s.database.url.endswith("from-file.db")
    assert s.escalation.ticket_prefix == "SUP"
    assert s.escalation.reopen_window == parse_duration("52h")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///from-env.db")
    monkeypatch.setenv("FIRSTLINE_CONFIG", str(cfg))
    s = load_settings(None)
    assert s.database.url.endswith("from-env.db")
    assert s.escalation.ticket_prefix == "SUP"


def test_bad_toml_value_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[http]\nhost = \"0.0.0.0\"\nport = 99999\n\n[escalation]\nreopen_window = \"soon\"\n",
        encoding="utf-8",
    )
    with pytest.raises(ContentError) as exc:
        load_settings(cfg)
    problems = {(p.key, p.line) for p in exc.value.problems}
    assert ("http.port", 3) in problems
    assert ("escalation.reopen_window", 6) in problems
    assert all(p.file == str(cfg) for p in exc.value.problems)


def test_broken_toml_and_unknown_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[database\nurl = 1\n", encoding="utf-8")
    with pytest.raises(ContentError) as exc:
        load_settings(cfg)
    assert exc.value.problems[0].line == 1 and "invalid TOML" in exc.value.problems[0].message
    cfg.write_text("[telegram]\nbot_tokn = \"x\"\n", encoding="utf-8")
    with pytest.raises(ContentError) as exc:
        load_settings(cfg)
    assert exc.value.problems[0].key == "telegram.bot_tokn" and exc.value.problems[0].line == 2


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRSTLINE_HTTP_PORT", "not-a-port")
    with pytest.raises(ContentError) as exc:
        load_settings(None)
    assert exc.value.problems[0].file == "environment"
    assert exc.value.problems[0].key == "FIRSTLINE_HTTP_PORT"


def test_missing_config_file() -> None:
    with pytest.raises(ContentError, match="config file not found"):
        load_settings(Path("/nonexistent/firstline.toml"))
