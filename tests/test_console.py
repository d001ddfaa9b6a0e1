"""The console channel as a newcomer uses it: the `firstline` command in a subprocess."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.categories import GOTO_ESCALATE, GOTO_NEXT, Category, load_categories
from config.settings import DEFAULTS_DIR

FIRSTLINE = [sys.executable, "-m", "bot.cli"]


@pytest.fixture
def console_env(process_env: dict[str, str]) -> dict[str, str]:
    """The child's environment: the test's database, output not buffered."""
    return {**process_env, "PYTHONUNBUFFERED": "1"}


def _run(env: dict[str, str], cwd: Path, args: list[str], stdin: str) -> str:
    out = subprocess.run(
        [*FIRSTLINE, *args],
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


def _account() -> Category:
    cats, problems = load_categories(DEFAULTS_DIR / "categories.yaml")
    assert problems == []
    return next(c for c in cats if c.id == "account")


def _unsolved_path(cat: Category) -> list[str]:
    """Button numbers that walk the checklist pressing each step's last option."""
    presses: list[str] = []
    step = cat.checklist[0]
    for _ in range(len(cat.checklist) + 1):
        presses.append(str(len(step.options)))
        goto = step.options[-1].goto
        if goto == GOTO_ESCALATE:
            break
        nxt = cat.next_step(step.id) if goto == GOTO_NEXT else cat.step(goto)
        if nxt is None:
            break
        step = nxt
    return presses


def test_scripted_session_from_question_to_csat(
    tmp_path: Path, console_env: dict[str, str]
) -> None:
    cat = _account()
    script = [
        "I forgot my password",  # the bundled article answers it
        "2",  # Didn't help -> the account checklist
        *_unsolved_path(cat),
        "The sign-in page says 'error 0x42' since this morning",
        "1",  # Done
        "2",  # Blocks my work -> high
    ]
    user_out = _run(console_env, tmp_path, ["chat", "--user", "ann"], "\n".join(script) + "\n")
    assert "Reset a forgotten password" in user_out
    assert "Step 1 of" in user_out
    assert "Ticket FL-1001 is created" in user_out

    l2_out = _run(
        console_env,
        tmp_path,
        ["chat", "--as", "l2", "--name", "bob"],
        "list\ntake FL-1001\nnote FL-1001 check the auth logs\n"
        "reply FL-1001 Please try to sign in again now\nresolve FL-1001\n",
    )
    assert "new ticket" in l2_out and "[FL-1001]" in l2_out
    assert "error 0x42" in l2_out  # the handoff packet carries the user's details
    assert "Internal note saved" in l2_out

    back = _run(console_env, tmp_path, ["chat", "--user", "ann"], "5\n")
    assert "bob is now working on your ticket FL-1001" in back
    assert "bob: Please try to sign in again now" in back
    assert "check the auth logs" not in back  # the note stayed internal
    assert "Ticket FL-1001 is resolved" in back
    assert "Thank you for the rating" in back

    tickets = _run(console_env, tmp_path, ["tickets", "--all", "--json"], "")
    assert '"status": "resolved"' in tickets and '"csat": 5' in tickets


class _Child:
    """A console process we type into and read from, with bounded waits."""

    def __init__(self, env: dict[str, str], cwd: Path, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*FIRSTLINE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        self.seen = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_until(self, needle: str, timeout: float = 60) -> str:
        """Everything read so far once ``needle`` appears in the new output."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle.encode() in self.seen[start:]:
                return self.seen[start:].decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.seen += chunk
        raise AssertionError(f"{needle!r} not seen; got:\n{self.seen[start:].decode()}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_mid_checklist_continues_at_the_same_step(
    tmp_path: Path, console_env: dict[str, str]
) -> None:
    child = _Child(console_env, tmp_path, ["chat", "--user", "kim"])
    child.send("/new")
    seen = child.read_until("VPN and network")
    number = next(
        line.split("]")[0].strip(" [")
        for line in seen.splitlines()
        if "]" in line and "VPN and network" in line
    )
    child.send(number)
    child.read_until("Step 1 of")
    child.send("2")  # didn't help
    before = child.read_until("Step 2 of")
    step2 = before[before.index("Step 2 of") :].split("[1]")[0].strip()
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(timeout=30)

    after = _run(console_env, tmp_path, ["chat", "--user", "kim"], "")
    assert "Step 2 of" in after and step2 in after, after
    assert "Step 1 of" not in after


def test_console_loop_wait_pauses_reply_resolve_reopen(
    tmp_path: Path, console_env: dict[str, str]
) -> None:
    cat = _account()
    script = ["I forgot my password", "2", *_unsolved_path(cat), "cannot sign in", "1", "3"]
    _run(console_env, tmp_path, ["chat", "--user", "ann"], "\n".join(script) + "\n")
    l2 = _run(console_env, tmp_path, ["chat", "--as", "l2", "--name", "bob"],
              "take FL-1001\nwait FL-1001 Which browser do you use?\nshow FL-1001\n")
    assert "waiting for customer" in l2 and "paused (waiting for customer)" in l2
    user = _run(console_env, tmp_path, ["chat", "--user", "ann"], "Firefox 120\n")
    assert "bob: Which browser do you use?" in user
    assert "waiting for your answer" in user
    l2 = _run(console_env, tmp_path, ["chat", "--as", "l2", "--name", "bob"],
              "show FL-1001\nreply FL-1001 Clear the cookies, please\nresolve FL-1001\n")
    assert "Firefox 120" in l2 and "in progress" in l2
    user = _run(console_env, tmp_path, ["chat", "--user", "ann"], "It is broken again\n")
    assert "Clear the cookies" in user and "is resolved" in user
    assert "Ticket FL-1001 is reopened" in user
    l2 = _run(console_env, tmp_path, ["chat", "--as", "l2", "--name", "bob"], "list\n")
    assert "FL-1001 reopened" in l2 and "It is broken again" in l2
    events = _run(console_env, tmp_path, ["sla", "explain", "FL-1001"], "")
    assert "pause (waiting for customer)" in events
