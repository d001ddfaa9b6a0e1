"""The real process under a shifted system clock (libfaketime) fires SLA notices on time.

Skipped where the `faketime` command is missing; `.ci/run` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_console import _account, _unsolved_path

FAKETIME = shutil.which("faketime")
pytestmark = pytest.mark.skipif(FAKETIME is None, reason="libfaketime (faketime) not installed")


def _at(env: dict[str, str], cwd: Path, moment: str, args: list[str], stdin: str) -> str:
    env = {
        **env,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # asyncio's loop keeps its real monotonic clock
        "TZ": "UTC",
    }
    out = subprocess.run(
        [str(FAKETIME), "-f", f"@{moment}", sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_first_response_warning_and_breach_at_the_configured_moments(
    tmp_path: Path, process_env: dict[str, str]
) -> None:
    # Monday 2026-01-12, the ticket opens at about 09:59 Moscow (06:59 UTC; the script takes
    # a few seconds). Free tier, high priority: the first response is due after 8 business
    # hours (09-18 Moscow), at about 17:59 Moscow = 14:59 UTC; warnings at 75% (6 h: about
    # 12:59 UTC) and 90% (7.2 h: about 14:11 UTC).
    bob = ["chat", "--as", "l2", "--name", "bob"]

    def at(moment: str, args: list[str], stdin: str) -> str:
        return _at(process_env, tmp_path, moment, args, stdin)

    script = ["I forgot my password", "2", *_unsolved_path(_account()), "details", "1", "2"]
    out = at("2026-01-12 06:59:00", ["chat", "--user", "ann"], "\n".join(script) + "\n")
    assert "Ticket FL-1001 is created" in out, out

    early = at("2026-01-12 12:58:00", bob, "")
    assert "% used" not in early and "breached" not in early

    warn = at("2026-01-12 13:00:00", bob, "")
    assert "first response SLA 75% used" in warn
    assert "90%" not in warn

    breach = at("2026-01-12 15:00:00", bob, "")
    assert "first response SLA 90% used" in breach
    assert "first response SLA breached" in breach
    assert "75%" not in breach  # sent once, already
    assert "Escalation to managers" not in breach  # due one hour after the breach
