"""`firstline run` as a separate process against the fake Bot API, configured only through
environment variables; SIGKILLed mid-flow twice and restarted: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.storage.db import Database
from bot.storage.models import Outbox
from tests.conftest import free_port
from tests.fakes.telegram_api import FakeTelegramAPI, FakeUser
from tests.telegram.conftest import L2

FIRSTLINE = Path(sys.executable).with_name("firstline")


class Proc:
    """One `firstline run` process with its log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = log.open("ab")
        self.p = subprocess.Popen(
            [str(FIRSTLINE), "run"], env=env, stdout=self.out, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=10)
        self.out.close()

    async def stop(self) -> int:
        """SIGTERM, then wait in a thread: the fake Bot API in this event loop must keep
        answering the calls a graceful shutdown still makes."""
        self.p.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.p.wait, 30)
        finally:
            self.out.close()


async def _unlock_inflight(database_url: str) -> None:
    """A row the killed process was sending stays locked for the dispatcher's LOCK_FOR
    (60 s) before the next process re-sends it — core behaviour; here we let that time pass."""
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.status == "sending")
                .values(locked_until=datetime(2000, 1, 1, tzinfo=UTC))
            )
    finally:
        await db.dispose()


@pytest.mark.skipif(not FIRSTLINE.exists(), reason="the firstline script is not installed")
async def test_kill_and_restart_loses_and_duplicates_nothing(
    fake: FakeTelegramAPI, tmp_path: Path, process_env: dict[str, str]
) -> None:
    fake.add_group(L2, "L2 desk", forum=True)
    env = dict(process_env)
    env.update(
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_URL=fake.url,
        TELEGRAM_L2_CHAT_ID=str(L2),
        FIRSTLINE_HTTP_HOST="127.0.0.1",
        FIRSTLINE_HTTP_PORT=str(free_port()),
        FIRSTLINE_LOG_LEVEL="INFO",
    )
    log = tmp_path / "firstline.log"
    ann = fake.user(5001, "Ann")
    bob = fake.user(9001, "Bob")

    t0 = time.monotonic()

    async def until(pred, what: str, within: float = 20.0):  # type: ignore[no-untyped-def]
        try:
            r = await fake.wait_for(pred, within=within, what=what)
            print(f"{time.monotonic() - t0:6.2f} {what}")
            return r
        except AssertionError:
            print(log.read_text(errors="replace")[-4000:])
            for m in fake.sent(ann.id)[-6:]:
                print("ANN>", m.message_id, m.text[:80], [b["text"] for b in m.buttons()])
            print(
                [
                    (
                        c.method,
                        c.status,
                        c.params.get("chat_id"),
                        str(c.params.get("text", c.params.get("callback_query_id")))[:40],
                    )
                    for c in fake.calls[-12:]
                ]
            )
            raise

    def newest_with(user: FakeUser, label: str):  # type: ignore[no-untyped-def]
        for m in reversed(fake.sent(user.id)):
            if any(label.lower() in b["text"].lower() for b in m.buttons()):
                return m
        return None

    async def press(user: FakeUser, label: str) -> None:
        msg = await until(lambda: newest_with(user, label), f"button {label!r}")
        fake.press(user, msg, label)

    proc = Proc(env, log)
    try:
        await until(lambda: fake.called("getUpdates"), "polling to start", within=60)
        fake.send_text(ann, "/start")
        await until(lambda: fake.sent(ann.id), "the greeting")
        fake.send_text(ann, "I forgot my password")
        await press(ann, "Didn't help")
        step1 = await until(lambda: newest_with(ann, "can't do this"), "checklist step 1")

        fake.press(ann, step1, step1.buttons()[-1]["text"])
        for _ in range(12):
            last = await until(
                lambda: next((m for m in reversed(fake.sent(ann.id)) if m.buttons()), None),
                "a prompt",
            )
            labels = [b["text"] for b in last.buttons()]
            if any("Done" in lbl for lbl in labels):
                break
            fake.press(ann, last, labels[-1])
            key = (ann.id, last.message_id)
            await until(lambda key=key: not fake.messages[key].buttons(), "next step")
        fake.send_text(ann, "Error 0x42 since this morning")
        await until(lambda: "Add more" in fake.sent(ann.id)[-1].text, "details ack")
        await press(ann, "Done")
        await press(ann, "Blocks my work")
        card = await until(
            lambda: next((m for m in fake.sent(L2) if "Take" in str(m.buttons())), None),
            "the card",
        )
        fake.press(bob, card, "Take")
        await until(lambda: "Bob" in fake.sent(ann.id)[-1].text, "claim notice")
        fake.send_text(bob, "Please try again now", chat_id=L2, thread_id=card.thread_id)
        await until(lambda: "Please try again now" in fake.sent(ann.id)[-1].text, "the relay")

        # SIGKILL while (a) the desk group is failing our sends, so committed posts wait in
        # the outbox, and (b) a burst of updates has been fetched and is being processed.
        fake.fail_next("sendMessage", 500, chat_id=L2, times=None)
        burst = [f"burst message {i}" for i in range(4)]
        for text in burst:
            fake.send_text(ann, text)
        last_id = fake.updates[-1]["update_id"]
        await until(
            lambda: any(
                c.method == "getUpdates"
                and isinstance(c.result, list)
                and any(u["update_id"] == last_id for u in c.result)
                for c in fake.calls
            ),
            "the burst to be fetched",
        )
        await until(
            lambda: any(c.status == 500 and c.params.get("chat_id") == L2 for c in fake.calls),
            "a failed post",
        )
        proc.kill()
        fake.clear_faults()
        await _unlock_inflight(env["DATABASE_URL"])
        proc = Proc(env, log)
        await until(
            lambda: all(
                any(t in m.text for m in fake.sent(L2) if m.message_id != card.message_id)
                for t in burst
            ),
            "the burst in L2",
            within=60,  # a process start, then re-handling what was not committed
        )
        fake.send_text(bob, "// internal: user retried", chat_id=L2, thread_id=card.thread_id)
        fake.send_text(bob, "/resolve", chat_id=L2, thread_id=card.thread_id)
        await press(ann, "5")
        await until(lambda: "★★★★★" in fake.messages[(L2, card.message_id)].text, "CSAT on card")
        assert await proc.stop() == 0
        print(f"{time.monotonic() - t0:6.2f} stopped")
    finally:
        if proc.p.poll() is None:
            proc.kill()

    # Nothing lost, nothing doubled.
    ann_texts = fake.texts(ann.id)
    counts = Counter(ann_texts)
    doubled = {t: n for t, n in counts.items() if n > 1}
    assert not doubled, doubled
    l2 = [m.text for m in fake.sent(L2) if m.message_id != card.message_id]
    for text in burst:
        assert sum(text in x for x in l2) == 1, text
    assert sum("Problem (user" in m.text for m in fake.sent(L2)) == 1  # one card
    assert len(fake.topics[L2]) == 1
    assert not any("internal: user retried" in t for t in ann_texts)
    assert "Please try again now" in "\n".join(ann_texts)
    await asyncio.sleep(0)
