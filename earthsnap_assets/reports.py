"""Small text renderings for the Dagster UI (markdown) and logs; pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], limit: int | None = None) -> str:
    """A GitHub-flavoured markdown table; `limit` keeps large tables readable and says what was cut."""
    rows = list(rows)
    shown = rows if limit is None else rows[:limit]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown]
    if len(shown) < len(rows):
        lines.append(f"\n_{len(rows) - len(shown)} more rows not shown_")
    return "\n".join(lines)


def split_table(counts: dict[str, dict[str, int]]) -> str:
    """species x split counts with totals."""
    splits = list(counts)
    species = sorted({s for per in counts.values() for s in per})
    rows = [[s, *(counts[sp].get(s, 0) for sp in splits), sum(counts[sp].get(s, 0) for sp in splits)] for s in species]
    rows.append(
        ["**total**", *(sum(counts[sp].values()) for sp in splits), sum(sum(c.values()) for c in counts.values())]
    )
    return markdown_table(["species", *splits, "all"], rows)
