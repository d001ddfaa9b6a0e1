"""What a large outbox costs the event loop: health checks, metrics and the hourly pruning.

    .venv/bin/python benchmarks/outbox_housekeeping.py               # 1,000,000 delivered rows
    .venv/bin/python benchmarks/outbox_housekeeping.py --rows 200000

Fills a new SQLite file (the default ``sqlite:///`` driver, which runs in the event loop's
thread) with delivered outbox rows, then times ``outbox_stats`` (``/healthz``, ``firstline
status``) and ``Metrics.refresh`` (``/metrics``), and prunes the rows as the running bot
does (``bot.maintenance.prune_outbox``), printing the longest unit of work: that is how
long the loop was held at most.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.maintenance import prune_outbox
from bot.metrics import Metrics
from bot.outbox import outbox_stats
from bot.storage.db import Database
from bot.storage.models import Outbox


async def main(rows: int) -> None:
    """Fill, measure, prune."""
    folder = tempfile.mkdtemp()
    db = Database(f"sqlite:///{folder}/outbox.db")
    await db.upgrade()
    now = datetime.now(UTC)
    row = {
        "channel": "telegram", "target": "123456", "kind": "message",
        "payload": {"text": "Thanks, the VPN works again. " * 3}, "status": "sent",
        "attempts": 1, "next_attempt_at": now, "created_at": now - timedelta(days=8),
    }
    t = time.perf_counter()
    for done in range(0, rows, 50_000):
        async with db.transaction() as s:
            await s.execute(insert(Outbox), [row] * min(50_000, rows - done))
    print(f"{rows:,} delivered rows written in {time.perf_counter() - t:.1f} s")
    for name in ("outbox_stats (/healthz)", "Metrics.refresh (/metrics)"):
        t = time.perf_counter()
        if name.startswith("outbox_stats"):
            await outbox_stats(db, now)
        else:
            await Metrics().refresh(db, now)
        print(f"{name}: {(time.perf_counter() - t) * 1000:.0f} ms")

    longest = 0.0
    real = db.transaction

    @asynccontextmanager
    async def timed(**kwargs: Any) -> AsyncIterator[AsyncSession]:
        nonlocal longest
        start = time.perf_counter()
        async with real(**kwargs) as s:
            yield s
        longest = max(longest, time.perf_counter() - start)

    db.transaction = timed  # type: ignore[method-assign]
    t = time.perf_counter()
    pruned = await prune_outbox(db, now - timedelta(days=7))
    print(
        f"pruned {pruned:,} rows in {time.perf_counter() - t:.1f} s; "
        f"longest unit of work {longest * 1000:.0f} ms"
    )
    await db.dispose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(main(p.parse_args().rows))
