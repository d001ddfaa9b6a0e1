"""``firstline status``: the outbox lag, platform errors being retried, failed deliveries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.app import App
from bot.cli import status_lines, status_report
from bot.clock import FakeClock
from bot.outbox import SendResult
from config.settings import DatabaseSettings, EscalationSettings, Settings
from handlers.memory import MemoryChannel

BAD_GATEWAY = "TelegramServerError: Bad Gateway"
REFUSED = "TelegramBadRequest: Bad Request: TEXT_INVALID"


async def _make_trouble(mem: MemoryChannel, clock: FakeClock) -> None:
    """Ann's reply keeps meeting a 502 (retried); Bob's was refused for good."""
    await mem.say("cid", "hello")  # delivered
    mem.sender.fail_next["ann"] = [SendResult(ok=False, error=BAD_GATEWAY)]
    await mem.say("ann", "hello")
    mem.sender.fail_next["bob"] = [SendResult(ok=False, permanent=True, error=REFUSED)]
    await mem.say("bob", "hello")
    clock.advance(timedelta(seconds=30))


async def test_status_shows_the_lag_and_the_platform_errors(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    await _make_trouble(mem, clock)
    report = await status_report(app.db, clock.now())
    out = report["outbox"]
    assert out["lag_seconds"] == 30.0
    assert out["counts"] == {"pending": 1, "failed": 1}  # delivered rows are not counted
    assert out["channels"] == {"memory": {"waiting": 1, "failed": 1, "lag_seconds": 30.0}}
    [retrying] = out["retrying_rows"]
    assert retrying["target"] == "ann" and retrying["attempts"] == 1
    assert retrying["error"] == BAD_GATEWAY and retrying["next_try_in_seconds"] == 0.0
    [failed] = out["failed_rows"]
    assert failed["target"] == "bob" and failed["error"] == REFUSED
    text = "\n".join(status_lines(report))
    assert "1 waiting, 1 failed; lag 30.0s" in text
    assert "memory: 1 waiting, lag 30.0s; 1 failed" in text
    assert BAD_GATEWAY in text and REFUSED in text
    # Delivered at last: no lag, nothing being retried.
    await mem.deliver()
    report = await status_report(app.db, clock.now())
    assert report["outbox"]["lag_seconds"] == 0.0 and report["outbox"]["retrying"] == 0
    assert "platform errors" not in "\n".join(status_lines(report))


def _cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "SLACK_"))}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "status", *args],
        text=True,
        capture_output=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )


async def test_the_status_command(tmp_path: Path, database_url: str) -> None:
    url = database_url
    # The rows were queued 120 s before the command runs (it reads the real clock).
    clock = FakeClock(datetime.now(UTC) - timedelta(seconds=120))
    settings = Settings(
        database=DatabaseSettings(url=url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )
    app = await App.create(settings, clock)
    try:
        await _make_trouble(MemoryChannel(app), clock)
    finally:
        await app.close()
    out = _cli(tmp_path, url)
    assert out.returncode == 0, out.stderr
    assert BAD_GATEWAY in out.stdout and REFUSED in out.stdout
    report = json.loads(_cli(tmp_path, url, "--json").stdout)
    assert 120 <= report["outbox"]["lag_seconds"] < 240
    assert report["outbox"]["retrying_rows"][0]["error"] == BAD_GATEWAY
    # No database at all: said plainly, with a non-zero exit.
    down = _cli(tmp_path, "postgresql+asyncpg://postgres@127.0.0.1:9/none")
    assert down.returncode == 1 and "database unavailable" in down.stderr
    assert "Traceback" not in down.stderr
