"""Harness of the crash test (``tests/test_crash.py``): the bot as a killable process, a fake
Slack that time-stamps every call, and a driver that re-delivers like Slack does.

* :class:`BotProcess` runs ``firstline run`` (Slack HTTP mode, and Telegram long polling
  against :class:`~tests.fakes.telegram_api.FakeTelegramAPI` when given one) on one fixed
  port; each start is a *life* with its own log file; :meth:`BotProcess.kill` sends SIGKILL.
  Telegram needs no re-delivery driver: the fake keeps every update until a ``getUpdates``
  offset confirms it, as Telegram does.
* :class:`StampedSlackApi` is :class:`~tests.fakes.slack_api.FakeSlackApi` whose recorded
  calls carry the monotonic time they arrived and the life of the bot that was running.
* :class:`Deliverer` POSTs signed Events API / interactivity / command requests to the bot and
  repeats a request until the bot answers 200 — Slack's redelivery (same ``event_id``, with
  ``X-Slack-Retry-Num``) and a user pressing a button again after an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from tests.conftest import free_port
from tests.fakes.slack_api import ApiCall, FakeSlackApi, SlackRequests, event_body
from tests.fakes.telegram_api import FakeTelegramAPI

FIRSTLINE = Path(sys.executable).with_name("firstline")
SECRET = "crash-test-signing-secret-0123456789"
L2 = "C0CRASHL2"
TG_L2 = -1009990001  # the Telegram desk: a forum, a topic per ticket

# Two categories whose only checklist step escalates (the shortest way to a ticket): Slack
# users pick the first, routed to the Slack desk; Telegram users the second, routed to the
# Telegram desk (see BotProcess.env).
CATEGORIES = """\
version: 1
categories:
  - id: crash
    title: {en: Crash test, ru: Краш-тест}
    description: {en: A scripted problem, ru: Сценарий}
    default_priority: normal
    checklist:
      - id: only
        text: {en: "Nothing to check, really.", ru: "Проверять нечего."}
        options:
          - id: go
            label: {en: "Escalate now", ru: "Передать сейчас"}
            goto: escalate
  - id: phone
    title: {en: Phone drill, ru: Телефон}
    description: {en: Another scripted problem, ru: Другой сценарий}
    default_priority: normal
    checklist:
      - id: only
        text: {en: "Nothing to check, really.", ru: "Проверять нечего."}
        options:
          - id: go
            label: {en: "Escalate now", ru: "Передать сейчас"}
            goto: escalate
"""

# A 24/7 tier with second-level targets, so every ticket gets its warning (50 %), breach and
# manager escalation within the test: warn at +3 s, breach at +6 s, managers at +9 s.
FAST_SLA = """\
default_tier: enterprise
warn_fractions: [0.5]
manager_escalation_after: 3s
owner_silence_after: 1h
calendars:
  always:
    timezone: UTC
    hours: 24/7
tiers:
  enterprise:
    title: {en: Enterprise, ru: Корпоративный}
    calendar: always
targets:
  enterprise:
    critical: {first_response: 6s, next_response: 1h, resolution: 8h}
    high: {first_response: 6s, next_response: 1h, resolution: 8h}
    normal: {first_response: 6s, next_response: 1h, resolution: 8h}
    low: {first_response: 6s, next_response: 1h, resolution: 8h}
"""


# A one-article knowledge base about something nobody in the test asks (and a fast start).
ARTICLE = """\
---
id: en-crash-printer
title: How to refill the office printer
category: crash
lang: en
questions:
  - how do I refill the printer toner
  - the printer says toner low
tags: [printer]
---
Open the front cover, pull out the toner cartridge and put in a new one.
"""


def content_dir(tmp_path: Path) -> Path:
    """``FIRSTLINE_CONTENT_DIR`` with the one-step category and the fast SLA, and a KB dir
    (``kb/``) beside it with one article."""
    kb = tmp_path / "kb" / "en" / "crash"
    kb.mkdir(parents=True)
    (kb / "printer.md").write_text(ARTICLE, encoding="utf-8")
    content = tmp_path / "content"
    content.mkdir()
    (content / "categories.yaml").write_text(CATEGORIES, encoding="utf-8")
    (content / "sla.yaml").write_text(FAST_SLA, encoding="utf-8")
    (content / "customers.yaml").write_text("organisations: []\n", encoding="utf-8")
    return content


# ---------------------------------------------------------------------- the fake Slack


class _Stamped(list):  # type: ignore[type-arg]
    """The fake's call list: each appended call gets its arrival time and the bot's life."""

    def __init__(self, owner: StampedSlackApi) -> None:
        super().__init__()
        self.owner = owner

    def append(self, call: ApiCall) -> None:
        call.at = time.monotonic()  # type: ignore[attr-defined]
        call.life = self.owner.life  # type: ignore[attr-defined]
        super().append(call)
        hook = self.owner.on_call
        if hook is not None:
            hook(call)  # runs before the fake answers: a kill here loses the response


class StampedSlackApi(FakeSlackApi):
    """The fake Slack Web API; :attr:`life` is set by the harness at every (re)start."""

    def __init__(self) -> None:
        super().__init__()
        self.life = 0
        self.calls = _Stamped(self)
        # Called with each call as it arrives, before the fake handles and answers it.
        self.on_call: Callable[[ApiCall], None] | None = None


def blocks_text(blocks: list[dict[str, Any]] | None) -> str:
    """All visible text of Block Kit blocks."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks or [])
    return "\n".join(out)


def call_text(call: ApiCall) -> str:
    """What a chat.postMessage call showed: its blocks' text, else its fallback text."""
    text = blocks_text(call.params.get("blocks"))
    return text or str(call.params.get("text") or "")


# ---------------------------------------------------------------------- the bot process


@dataclass
class Life:
    """One run of the process."""

    n: int
    pid: int
    log: Path
    started: float
    healthy: float | None = None
    ended: float | None = None
    killed: bool = False
    returncode: int | None = None


@dataclass
class BotProcess:
    """``firstline run`` against the fake Slack, restartable on the same port and database."""

    tmp_path: Path
    api: StampedSlackApi
    content: Path
    telegram: FakeTelegramAPI | None = None
    port: int = field(default_factory=free_port)
    lives: list[Life] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.tmp_path / "crash.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FIRSTLINE_", "TELEGRAM_", "SLACK_", "DATABASE_"))
        }
        env.update(
            SLACK_BOT_TOKEN="xoxb-crash-test",
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=self.api.api_url,
            SLACK_L2_CHANNEL=L2,
            # The default driver (statements in the event loop's thread, the prepared fast
            # path); FIRSTLINE_CRASH_DRIVER=sqlite+aiosqlite runs the other one.
            DATABASE_URL=f"{os.environ.get('FIRSTLINE_CRASH_DRIVER', 'sqlite')}:///{self.db}",
            FIRSTLINE_CONTENT_DIR=str(self.content),
            FIRSTLINE_KB_DIR=str(self.tmp_path / "kb"),
            FIRSTLINE_HTTP_HOST="127.0.0.1",
            FIRSTLINE_HTTP_PORT=str(self.port),
            FIRSTLINE_LOG_LEVEL="INFO",
            FIRSTLINE_DIGEST__ENABLED="false",
        )
        if self.telegram is not None:
            env.update(
                TELEGRAM_BOT_TOKEN=self.telegram.token,
                TELEGRAM_API_URL=self.telegram.url,
                TELEGRAM_L2_CHAT_ID=str(TG_L2),
                FIRSTLINE_ESCALATION__ROUTES=json.dumps(
                    {"crash": f"slack:{L2}", "phone": f"telegram:{TG_L2}"}
                ),
            )
        return env

    def start(self) -> Life:
        n = len(self.lives) + 1
        log = self.tmp_path / f"life-{n:02d}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(FIRSTLINE), "run"],
                env=self.env(),
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        life = Life(n, self.proc.pid, log, time.monotonic())
        self.lives.append(life)
        self.api.life = n
        return life

    @property
    def current(self) -> Life:
        return self.lives[-1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_healthy(self, within: float = 40.0) -> None:
        """Until ``/healthz`` answers 200 (the HTTP server starts after migrations)."""
        life = self.current
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if not self.alive():
                    raise AssertionError(
                        f"life {life.n} exited with {self.proc and self.proc.returncode}:\n"
                        + life.log.read_text(errors="replace")[-3000:]
                    )
                try:
                    async with http.get(
                        f"http://127.0.0.1:{self.port}/healthz",
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as r:
                        if r.status == 200:
                            life.healthy = time.monotonic()
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"life {life.n} not healthy within {within}s:\n"
                        + life.log.read_text(errors="replace")[-3000:]
                    )
                await asyncio.sleep(0.05)

    async def healthz(self) -> dict[str, Any] | None:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{self.port}/healthz", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                if r.status == 200:
                    data: dict[str, Any] = await r.json()
                    return data
        except (aiohttp.ClientError, TimeoutError):
            pass
        return None

    def kill(self) -> float:
        """SIGKILL the running life; returns the moment."""
        assert self.proc is not None
        at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=10)
        life = self.current
        life.ended, life.killed, life.returncode = at, True, rc
        return at

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM: the graceful shutdown; returns the exit code. Polls without blocking the
        event loop, which also serves the fake Slack the process may still be calling."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait(timeout=10)
        life = self.current
        life.ended, life.returncode = time.monotonic(), rc
        return rc

    def life_at(self, moment: float) -> int:
        """The life that sent a call arriving at ``moment``: a process needs more than a
        second to import and start, so a call arriving within a second of a restart was
        still sent by the life before (its bytes were in flight when it was killed)."""
        n = 0
        for life in self.lives:
            if life.started + 1.0 <= moment:
                n = life.n
        return n


# ---------------------------------------------------------------------- delivery like Slack


class Deliverer:
    """POSTs signed requests to the bot until one is acknowledged with 200."""

    def __init__(self, bot: BotProcess, within: float = 60.0) -> None:
        self.bot = bot
        self.requests = SlackRequests(SECRET)
        self.within = within
        self.redeliveries = 0
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Deliverer:
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        await self._http.close()

    async def _post(self, body: str, content_type: str, what: str, *, event: bool) -> None:
        assert self._http is not None
        deadline = time.monotonic() + self.within
        attempt = 0
        last = ""
        while True:
            signed = self.requests.sign(
                body, content_type, retry_num=attempt if (event and attempt) else None
            )
            try:
                async with self._http.post(
                    self.bot.url,
                    data=signed.body.encode(),
                    headers=signed.headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}: {(await r.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            attempt += 1
            self.redeliveries += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never acknowledged: {last}")
            await asyncio.sleep(0.1)

    async def event(self, event: dict[str, Any], what: str) -> None:
        """An Events API delivery; retried with the same ``event_id``."""
        body = json.dumps(event_body(event, team_id="T0001", app_id="A0001"))
        await self._post(body, "application/json", what, event=True)

    async def interaction(self, payload: dict[str, Any], what: str) -> None:
        """A button press; pressed again (the same payload) until acknowledged."""
        body = urlencode({"payload": json.dumps(payload)})
        await self._post(body, "application/x-www-form-urlencoded", what, event=False)

    async def command(self, fields: dict[str, str], what: str) -> None:
        """A slash command; sent again until acknowledged."""
        await self._post(urlencode(fields), "application/x-www-form-urlencoded", what, event=False)


TICKET_NUMBER = re.compile(r"\b(FL-\d+)\b")
TRACEBACK = "Traceback (most recent call last)"
