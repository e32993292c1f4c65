"""What the fault suite prints at the end: one row per injected fault (pure bookkeeping)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FaultRow:
    fault: str
    injected: int  # faults injected: kills, restarts, 429/500/stalled/cut requests, ...
    objects: int  # objects compared in the final full comparison
    converge_s: float  # end of the fault → full comparison clean
    note: str = ""


@dataclass(slots=True)
class FaultLog:
    """One test's records; filled by the test, printed by `pytest_terminal_summary`."""

    test: str
    rows: list[FaultRow] = field(default_factory=list)

    def record(self, fault: str, *, injected: int, objects: int, converge_s: float, note: str = "") -> None:
        self.rows.append(FaultRow(fault, injected, objects, converge_s, note))


def summary_lines(logs: Sequence[FaultLog]) -> list[str]:
    """The summary table, or nothing when no test recorded anything."""
    rows = [("test", "fault", "injected", "objects checked", "converged after", "note")]
    for log in logs:
        for r in log.rows:
            rows.append((log.test, r.fault, str(r.injected), str(r.objects), f"{r.converge_s:.1f} s", r.note))
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(r.injected for log in logs for r in log.rows)
    checked = sum(r.objects for log in logs for r in log.rows)
    lines.append(f"total: {total} faults injected, {checked} objects checked")
    return lines
