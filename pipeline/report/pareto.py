"""The accuracy / latency Pareto front: the rows no other row beats on both at once."""
from __future__ import annotations

from typing import Sequence

from pipeline.measure.targets import device_family


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points, whether each is on the front (lower latency and higher
    accuracy are better). A point is off the front when another is at least as good on both
    and strictly better on one; equal points are all on it."""
    flags = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc)
            for j, (l2, a2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def mark_pareto(rows: list[dict], key=lambda r: (device_family(r["device"]), r["batch"])) -> None:
    """Set `pareto` on every measured row: on the front of its group (same device family and
    batch size by default) by p90 latency and accuracy. Rows not measured get None."""
    groups: dict = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("p90_ms") is not None and row.get("accuracy") is not None:
            groups.setdefault(key(row), []).append(row)
        else:
            row["pareto"] = None
    for members in groups.values():
        for row, on in zip(members, pareto_front([(r["p90_ms"], r["accuracy"]) for r in members])):
            row["pareto"] = on
