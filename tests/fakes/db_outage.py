"""A database that is briefly unavailable, for real: a SQLite file locked by another process.

:class:`SqliteLock` holds the write lock of a SQLite file from a separate connection (what a
backup tool, a migration or a stuck process does). Every unit of work of the app begins with
``BEGIN IMMEDIATE`` and so waits for it; :func:`short_busy_timeout` makes that wait end after
a few milliseconds with ``database is locked`` instead of the production 30 seconds. For
PostgreSQL the same outage is made with :class:`tests.fakes.tcp_proxy.FaultyProxy`.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType

from sqlalchemy.engine import make_url

from bot.storage.db import Database


class SqliteLock:
    """Holds (or not) the write lock of the SQLite database at ``url``."""

    def __init__(self, url: str) -> None:
        path = make_url(url).database
        assert path, url
        self._con = sqlite3.connect(path, isolation_level=None, timeout=5)
        self.held = False

    def acquire(self) -> SqliteLock:
        """Take the write lock (waits for a writer of the app to finish first)."""
        if not self.held:
            self._con.execute("BEGIN IMMEDIATE")
            self.held = True
        return self

    def release(self) -> None:
        """The outage is over."""
        if self.held:
            self._con.execute("ROLLBACK")
            self.held = False

    def close(self) -> None:
        """Release and disconnect."""
        self.release()
        self._con.close()

    def __enter__(self) -> SqliteLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


async def short_busy_timeout(db: Database, ms: int = 30) -> None:
    """Make ``db`` give up on a locked file after ``ms`` (new connections, from now on)."""
    assert db.sqlite
    db.busy_timeout = ms / 1000
    await db.engine.dispose()  # pooled connections were made with the long timeout
