"""Problems found in configuration and content files, reported with file, line and key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an admin-edited file.

    ``key`` is a dotted path into the file's structure (``categories.2.checklist.0.text``)
    or a front-matter field; ``line`` is 1-based, or ``None`` when the file has no lines
    (a missing file, an environment variable).
    """

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}{key}: {self.message}"


class ContentError(Exception):
    """Raised when content or settings are invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.key))
        super().__init__("\n".join(str(p) for p in self.problems))
