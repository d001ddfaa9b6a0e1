"""Telling "the database cannot be used right now" apart from a bug.

An adapter that meets the first must not acknowledge the platform event (or must retry it
itself): the database comes back, the event does not. A bug in handling one event is
different — it is logged, kept in the event log and answered with an apology, because
handling it again would fail again.
"""

from __future__ import annotations

import socket

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class DatabaseUnavailable(RuntimeError):
    """The database refused, dropped or timed out a unit of work; nothing was committed."""


# SQLAlchemy's wrappers of "cannot use the database now", and the raw errors of a driver's
# connect or of a dropped socket (asyncpg raises those unwrapped).
_UNAVAILABLE = (
    DatabaseUnavailable,
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the database is unavailable:
    locked beyond the busy timeout (SQLite), unreachable, restarting, or a dropped connection.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False
