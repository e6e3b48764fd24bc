"""The one error type trace loaders raise, so callers can tell bad input from bugs.

It subclasses ValueError (bad input is a bad value) and carries the file, line and field
as attributes, so a CLI can print them and a test can assert on them without parsing text.
"""

from __future__ import annotations

from pathlib import Path


class TraceFormatError(ValueError):
    """A trace file does not match its format: names file, line, field and what was expected."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self.describe(self.path, line, field, problem))

    @staticmethod
    def describe(path: str, line: int | None, field: str | None, problem: str) -> str:
        """One-line description, also used for the reasons recorded when bad rows are skipped."""
        where = path if line is None else f"{path}, line {line}"
        if field:
            where += f", field {field!r}"
        return f"{where}: {problem}"
