"""The security suite's counters: what each test tried and how much of it held.

Any test may record into the session's `Tally` (fixture `tally`, defined in tests/conftest.py);
`pytest_terminal_summary` there prints the table that SECURITY.md quotes.
"""

from __future__ import annotations

import dataclasses

import pytest

__all__ = ["TALLY", "Tally"]


@dataclasses.dataclass
class Tally:
    """Counters per category: (tried, held) where held = refused, contained or clean."""

    rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, category: str, *, tried: int, held: int) -> None:
        row = self.rows.setdefault(category, [0, 0])
        row[0] += tried
        row[1] += held


TALLY = pytest.StashKey[Tally]()
