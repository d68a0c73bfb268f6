"""Result tables: absolute figures per implementation, ratios, and targets marked PASS/MISS.

Every ratio is "how many times better blockws is": subject / reference for
rates, reference / subject for latencies and memory (where lower is better).
So a ratio above 1 always means blockws wins, and a target is met when the
ratio is at least its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Value = Optional[float]

SUBJECT = "blockws"


@dataclass
class Target:
    """The subject must reach ``threshold`` times the reference column (``RAW``, ``PEER`` or a column name)."""

    reference: str
    threshold: float
    note: str = ""


RAW = "raw"  # the table's raw-TCP column
PEER = "best peer"  # the best of the table's peer columns for this row


@dataclass
class Row:
    label: str
    values: dict[str, Value]
    unit: str  # "/s", "MB/s", "µs", "KiB", "×"
    higher_is_better: bool = True
    targets: list[Target] = field(default_factory=list)
    subject: str = SUBJECT
    show_values: bool = True  # False: a sub-row that only adds ratios for another subject
    flagged: set[str] = field(default_factory=set)  # columns whose figure is only a lower bound (marked *)


@dataclass
class Table:
    title: str
    columns: list[str]
    raw: str | None  # the raw-TCP column, if the table has one
    peers: list[str]  # the columns "best peer" is chosen from
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def ratio(row: Row, reference: Value) -> Value:
    subject = row.values.get(row.subject)
    if subject is None or reference is None or subject <= 0 or reference <= 0:
        return None
    return subject / reference if row.higher_is_better else reference / subject


def best_peer(table: Table, row: Row) -> tuple[str | None, Value]:
    found = [(name, row.values.get(name)) for name in table.peers if row.values.get(name) is not None]
    if not found:
        return None, None
    pick = max if row.higher_is_better else min
    return pick(found, key=lambda item: item[1])  # type: ignore[arg-type,return-value]


def reference_value(table: Table, row: Row, reference: str) -> tuple[str, Value]:
    if reference == RAW:
        return "raw", row.values.get(table.raw) if table.raw else None
    if reference == PEER:
        name, value = best_peer(table, row)
        return name or "best peer", value
    return reference, row.values.get(reference)


@dataclass
class Verdict:
    """One target of one row, evaluated."""

    table: str
    row: str
    subject: str
    reference: str
    threshold: float
    ratio: Value

    @property
    def status(self) -> str:
        if self.ratio is None:
            return "n/a"
        return "PASS" if self.ratio >= self.threshold else "MISS"


def verdicts(table: Table) -> list[Verdict]:
    out = []
    for row in table.rows:
        for target in row.targets:
            name, value = reference_value(table, row, target.reference)
            label = "raw TCP" if target.reference == RAW else "best peer" if target.reference == PEER else name
            out.append(Verdict(table.title, row.label, row.subject, label, target.threshold, ratio(row, value)))
    return out


# -- formatting -------------------------------------------------------------------------


def fmt_value(value: Value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "×":
        return f"{value:.2f}×"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def fmt_ratio(value: Value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def target_cell(table: Table, row: Row, target: Target) -> str:
    _, value = reference_value(table, row, target.reference)
    r = ratio(row, value)
    label = "raw" if target.reference == RAW else target.reference
    status = "n/a" if r is None else "PASS" if r >= target.threshold else "MISS"
    note = f" {target.note}" if target.note else ""
    return f"{fmt_ratio(r)} (≥{target.threshold:g}× {label}{note}) {status}"


def render(table: Table) -> str:
    header = ["", *table.columns, "vs raw", "vs best peer", "target"]
    lines: list[list[str]] = []
    for row in table.rows:
        cells = [row.label]
        cells += [
            (fmt_value(row.values.get(c), row.unit) + ("*" if c in row.flagged else "")) if row.show_values else ""
            for c in table.columns
        ]
        raw_ratio = ratio(row, row.values.get(table.raw)) if table.raw else None
        peer_name, peer_value = best_peer(table, row)
        peer_ratio = ratio(row, peer_value)
        cells.append(fmt_ratio(raw_ratio) if table.raw else "")
        cells.append(f"{fmt_ratio(peer_ratio)} {peer_name}" if peer_ratio is not None else "—")
        cells.append("; ".join(target_cell(table, row, t) for t in row.targets))
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
        return "  ".join([first, *rest, cells[-1]]).rstrip()

    rule = "-" * min(160, sum(widths) + 2 * len(widths))
    out = [table.title, rule, line(header), rule, *map(line, lines), rule]
    out += [f"  {note}" for note in table.notes]
    return "\n".join(out)


def render_verdicts(all_verdicts: list[Verdict]) -> str:
    if not all_verdicts:
        return ""
    out = ["TARGETS"]
    for v in all_verdicts:
        subject = "" if v.subject == SUBJECT else f" [{v.subject}]"
        out.append(f"  {v.status:4}  {v.row}{subject}: {fmt_ratio(v.ratio)} {v.reference} (target ≥{v.threshold:g}×)")
    passed = sum(v.status == "PASS" for v in all_verdicts)
    out.append(f"  {passed}/{len(all_verdicts)} targets met")
    return "\n".join(out)
