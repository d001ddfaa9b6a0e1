"""Application settings: environment variables, an optional TOML file, and defaults.

Precedence, highest first: the well-known flat environment variables
(``TELEGRAM_BOT_TOKEN``, ``DATABASE_URL``...), ``FIRSTLINE_<SECTION>__<KEY>`` variables,
an untracked ``.env`` file, the TOML file (``--config PATH`` or ``FIRSTLINE_CONFIG``),
then the defaults below. Tokens are :class:`~pydantic.SecretStr` so they never print.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.problems import ContentError, Problem

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"

# Flat names an admin expects from the docs, mapped to their place in the settings tree.
FLAT_ENV: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("database", "url"),
    "FIRSTLINE_KB_DIR": ("kb", "dir"),
    "FIRSTLINE_CONTENT_DIR": ("content", "dir"),
    "FIRSTLINE_HTTP_HOST": ("http", "host"),
    "FIRSTLINE_HTTP_PORT": ("http", "port"),
    "FIRSTLINE_LOG_LEVEL": ("log", "level"),
    "FIRSTLINE_LOG_FORMAT": ("log", "format"),
    "TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
    "TELEGRAM_API_URL": ("telegram", "api_url"),
    "TELEGRAM_WEBHOOK_URL": ("telegram", "webhook_url"),
    "TELEGRAM_WEBHOOK_SECRET": ("telegram", "webhook_secret"),
    "TELEGRAM_L2_CHAT_ID": ("telegram", "l2_chat_id"),
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
    "SLACK_API_URL": ("slack", "api_url"),
    "SLACK_L2_CHANNEL": ("slack", "l2_channel"),
}

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


def parse_duration(value: object) -> timedelta:
    """Parse ``"90m"``, ``"1h 30m"``, ``"3d"``, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ValueError(f"not a duration: {value!r} (use e.g. '30m', '4h', '2d', '1h 30m')")


class Section(BaseModel):
    """A settings section; unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(Section):
    """Where the state lives. SQLite by default (``sqlite:///`` runs it in the event loop's
    thread, ``sqlite+aiosqlite:///`` in aiosqlite's); PostgreSQL via ``postgresql+asyncpg://``."""

    url: str = "sqlite:///firstline.db"
    echo: bool = False
    # Delivered outbox rows are deleted this long after they were written (the running bot
    # does it hourly): the outbox is a queue, not an archive.
    outbox_keep: timedelta = timedelta(days=7)

    @field_validator("outbox_keep", mode="before")
    @classmethod
    def _duration(cls, v: object) -> timedelta:
        return parse_duration(v)


class ContentSettings(Section):
    """Admin-edited content files. ``dir`` overrides the bundled defaults as a whole."""

    dir: Path | None = None
    categories: Path | None = None
    sla: Path | None = None
    customers: Path | None = None

    def path(self, name: Literal["categories", "sla", "customers"]) -> Path:
        """The file for ``name``: explicit path, else ``dir/name.yaml``, else the default."""
        explicit: Path | None = getattr(self, name)
        if explicit is not None:
            return explicit
        if self.dir is not None:
            return self.dir / f"{name}.yaml"
        return DEFAULTS_DIR / f"{name}.yaml"


class KbSettings(Section):
    """Knowledge base folder and matcher thresholds (None = the matcher's calibrated default)."""

    dir: Path | None = None
    answer_threshold: float | None = Field(default=None, ge=0, le=1)
    suggest_threshold: float | None = Field(default=None, ge=0, le=1)
    answer_margin: float | None = Field(default=None, ge=0, le=1)
    # The bundled English word vectors (kb/vectors); false = the bag-of-words matcher
    # alone, with its own calibrated thresholds.
    vectors: bool = True
    reload_interval_seconds: float = Field(default=5.0, ge=0)

    def folder(self) -> Path:
        """The KB folder to load."""
        return self.dir if self.dir is not None else DEFAULTS_DIR / "kb"


class TelegramSettings(Section):
    """Telegram bot: token, Bot API server, webhook and the L2 group."""

    bot_token: SecretStr | None = None
    api_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    l2_chat_id: int | None = None
    l3_chat_id: int | None = None
    consultants: list[int] = Field(default_factory=list)
    managers: list[int] = Field(default_factory=list)


class SlackSettings(Section):
    """Slack app: tokens, signing secret, Web API URL and the L2 channel."""

    bot_token: SecretStr | None = None
    app_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    api_url: str | None = None
    l2_channel: str | None = None
    l3_channel: str | None = None
    consultants: list[str] = Field(default_factory=list)
    managers: list[str] = Field(default_factory=list)


class HttpSettings(Section):
    """The bot's one HTTP server (webhooks, health, metrics)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class LogSettings(Section):
    """Logging level and format (``text`` for people, ``json`` for log shippers)."""

    level: str = "INFO"
    format: Literal["text", "json"] = "text"


class EscalationSettings(Section):
    """Tickets and the L2 desk."""

    ticket_prefix: str = Field(default="FL", pattern=r"^[A-Z][A-Z0-9]{0,7}$")
    first_ticket_number: int = Field(default=1001, ge=1)
    reopen_window: timedelta = timedelta(days=3)
    note_prefix: str = Field(default="//", min_length=1)
    anonymous_consultants: bool = False
    # Category -> destination ("console:l2", "telegram:-100123", "slack:C0123").
    routes: dict[str, str] = Field(default_factory=dict)
    default_destination: str | None = None
    l3_destination: str | None = None
    # Console consultants allowed to act from `firstline chat --as l2` (empty = anyone local).
    console_consultants: list[str] = Field(default_factory=list)
    # Where manager escalations go, as destinations ("telegram:123", "slack:U0123").
    managers: list[str] = Field(default_factory=list)
    # Who a breach notice mentions (e.g. "@support_lead" or "<@U0LEAD>").
    l2_lead: str | None = None
    # The language of ticket cards and notices in the L2 channel.
    language: Literal["en", "ru"] = "en"

    @field_validator("reopen_window", mode="before")
    @classmethod
    def _duration(cls, v: object) -> timedelta:
        return parse_duration(v)


class DigestSettings(Section):
    """The managers' daily SLA digest."""

    enabled: bool = True
    time: str = Field(default="09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: str = "Europe/Moscow"
    language: Literal["en", "ru"] = "en"
    # Destinations ("telegram:123", "slack:C0123", "console:managers"); empty = nobody.
    recipients: list[str] = Field(default_factory=list)
    # A bot "solve" counts only if the user does not come back with the same problem
    # within this window.
    recontact_window: timedelta = timedelta(days=3)
    chart: bool = True

    @field_validator("recontact_window", mode="before")
    @classmethod
    def _duration(cls, v: object) -> timedelta:
        return parse_duration(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class DialogSettings(Section):
    """Dialog behaviour."""

    default_language: Literal["en", "ru"] = "en"
    max_message_chars: int = Field(default=4000, ge=100)
    csat: bool = True


class PrivacySettings(Section):
    """Personal data: ``retention`` (e.g. ``365d``) makes the running bot anonymise, once a
    day, conversations and tickets that ended longer ago (what ``firstline retention`` does
    by hand); unset, nothing is anonymised on a schedule."""

    retention: timedelta | None = None

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, v: object) -> timedelta | None:
        if v is None or v == "":
            return None
        period = parse_duration(v)
        if period < timedelta(days=1):
            raise ValueError("a retention period shorter than a day would erase live history")
        return period


class Settings(BaseSettings):
    """Everything configurable. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="FIRSTLINE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
    )

    database: DatabaseSettings = DatabaseSettings()
    content: ContentSettings = ContentSettings()
    kb: KbSettings = KbSettings()
    telegram: TelegramSettings = TelegramSettings()
    slack: SlackSettings = SlackSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    escalation: EscalationSettings = EscalationSettings()
    dialog: DialogSettings = DialogSettings()
    digest: DigestSettings = DigestSettings()
    privacy: PrivacySettings = PrivacySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flat env names win over nested ones, then .env, then the TOML data (init)."""
        return (
            FlatEnvSource(settings_cls),
            env_settings,
            dotenv_settings,
            init_settings,
            file_secret_settings,
        )


class FlatEnvSource(PydanticBaseSettingsSource):
    """Reads the documented flat variables (``TELEGRAM_BOT_TOKEN``...) from env and .env."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: values are produced as a whole tree by :meth:`__call__`."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The nested dict built from the flat variables that are set."""
        values: dict[str, str | None] = {}
        env_file = Path(".env")
        if env_file.is_file():
            values.update(dotenv_values(env_file))
        values.update(os.environ)
        out: dict[str, Any] = {}
        for name, path in FLAT_ENV.items():
            raw = values.get(name)
            if raw is None or raw == "":
                continue
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = raw
        return out


def _toml_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """Best-effort line of a key in a TOML file (``[section]`` then ``key =``)."""
    lines = text.splitlines()
    section_line: int | None = None
    if not loc:
        return None
    section = str(loc[0])
    for i, line in enumerate(lines, 1):
        if re.match(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$", line):
            section_line = i
            break
    if len(loc) >= 2 and section_line is not None:
        key = str(loc[1])
        for i in range(section_line, len(lines)):
            stripped = lines[i].strip()
            if stripped.startswith("[") and i + 1 != section_line:
                break
            if re.match(rf"^{re.escape(key)}\s*=", stripped):
                return i + 1
        return section_line
    if section_line is not None:
        return section_line
    for i, line in enumerate(lines, 1):
        if re.match(rf"^\s*{re.escape(section)}\s*=", line):
            return i
    return None


def _env_name_for(loc: tuple[str | int, ...]) -> str | None:
    for name, path in FLAT_ENV.items():
        if tuple(loc[: len(path)]) == path and name in os.environ:
            return name
    nested = "FIRSTLINE_" + "__".join(str(p).upper() for p in loc)
    return nested if nested in os.environ else None


def config_path_from_env(explicit: Path | None) -> Path | None:
    """The TOML file to read: ``--config`` wins over ``FIRSTLINE_CONFIG``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("FIRSTLINE_CONFIG")
    return Path(env) if env else None


def load_settings(config_path: Path | None = None) -> Settings:
    """Build :class:`Settings`; raise :class:`ContentError` naming file, line and key."""
    path = config_path_from_env(config_path)
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except FileNotFoundError:
            raise ContentError([Problem(str(path), None, "", "config file not found")]) from None
        except UnicodeDecodeError as exc:
            raise ContentError([Problem(str(path), None, "", f"not UTF-8: {exc.reason}")]) from None
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+)", str(exc))
            line = int(m.group(1)) if m else None
            raise ContentError([Problem(str(path), line, "", f"invalid TOML: {exc}")]) from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems: list[Problem] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            env_name = _env_name_for(loc)
            if env_name is not None:
                problems.append(Problem("environment", None, env_name, err["msg"]))
            elif path is not None:
                problems.append(Problem(str(path), _toml_line(text, loc), key, err["msg"]))
            else:
                problems.append(Problem("settings", None, key, err["msg"]))
        raise ContentError(problems) from None
