"""The report's plots as PNG bytes (matplotlib, Agg backend: no display needed).

accuracy_vs_p90: every measured row on the headline's device and batch, Pareto front marked;
latency_per_stage: p50 and p90 of those rows in pipeline order, coloured by stage;
size_per_stage: size on disk of each artifact, coloured by stage;
confusion: the teacher's and the deployed model's confusion matrices on val (pipeline.report.per_class);
mislabel_suspects, near_copies: the data audit's findings as pictures (pipeline.render.thumbnails).
"""
from __future__ import annotations

from pipeline.render.png import png as _png
from pipeline.report.build import STAGE_ORDER

STAGE_COLOURS = {"finetune": "#4c72b0", "distill": "#dd8452", "prune": "#55a868",
                 "quantize": "#c44e52", "export": "#8172b3"}
MARKERS = "osD^vP*X<>"   # one per runtime, in registry order


def runtime_marker(runtime: str) -> str:
    import runtimes
    names = list(runtimes.RUNTIMES)
    return MARKERS[names.index(runtime) % len(MARKERS)] if runtime in names else "o"


def _selected(report: dict) -> list[dict]:
    h = report.get("headline") or (report.get("headlines") or [None])[0]
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    if h:
        return [r for r in ok if r["device_family"] == h["target"] and r["batch"] == h["batch"]]
    if not ok:
        return []
    first = ok[0]
    return [r for r in ok if r["device_family"] == first["device_family"] and r["batch"] == first["batch"]]


def _ms_text(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _clusters(rows: list[dict], log_x: bool):
    """Indices of points close enough to overlap, grouped (fp32 ONNX and IR often coincide), so
    each group gets one numeric label."""
    import math
    accs = [r["accuracy"] for r in rows]
    dy = max(max(accs) - min(accs), 1.0) * 0.03
    xs = [math.log10(r["p90_ms"]) if log_x else r["p90_ms"] for r in rows]
    dx = 0.08 if log_x else max(max(xs) - min(xs), 1e-9) * 0.04
    clusters: list[tuple[float, float, list[int]]] = []
    for i, (r, x) in enumerate(zip(rows, xs)):
        for cx, cy, members in clusters:
            if abs(cx - x) <= dx and abs(cy - r["accuracy"]) <= dy:
                members.append(i)
                break
        else:
            clusters.append((x, r["accuracy"], [i]))
    return [members for _, _, members in clusters]


def accuracy_vs_latency(rows: list[dict], title: str) -> bytes:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    lat = [r["p90_ms"] for r in rows]
    log_x = bool(lat) and max(lat) / max(min(lat), 1e-9) > 20
    for r in rows:
        ax.scatter(r["p90_ms"], r["accuracy"], s=70, marker=runtime_marker(r["runtime"]),
                   color=STAGE_COLOURS.get(r["stage"], "grey"), edgecolor="black", linewidth=0.6, zorder=3)
    # Numbers on the points, names in a key beside the plot: names would overlap each other.
    for members in _clusters(rows, log_x):
        r = rows[members[0]]
        ax.annotate(",".join(str(i + 1) for i in members), (r["p90_ms"], r["accuracy"]),
                    textcoords="offset points", xytext=(7, 5), fontsize=8, weight="bold")
    key = "\n".join(f"{i + 1}  {r['artifact']} ({r['runtime']}/{r['device']})"
                     + ("  [deployed]" if r.get("deployed") else "") for i, r in enumerate(rows))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=7.5, family="monospace")
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["p90_ms"])
    if front:
        ax.step([r["p90_ms"] for r in front], [r["accuracy"] for r in front], where="post",
                color="black", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
        ax.scatter([r["p90_ms"] for r in front], [r["accuracy"] for r in front], s=220, facecolors="none",
                   edgecolors="black", linewidth=1.2, zorder=4, label="on the Pareto front")
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.25, y=0.12)
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        ax.scatter([], [], marker=runtime_marker(runtime), color="white", edgecolor="black", label=runtime)
    for stage in STAGE_ORDER:
        if any(r["stage"] == stage for r in rows):
            ax.scatter([], [], marker="o", color=STAGE_COLOURS[stage], label=f"stage: {stage}")
    ax.set_xlabel("p90 latency (ms, lower is better)")
    ax.set_ylabel("val top-1 (%, higher is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", bbox_to_anchor=(1.02, 0.0), frameon=False)
    return _png(fig)


def latency_per_stage(rows: list[dict], title: str) -> bytes:
    import matplotlib.pyplot as plt
    rows = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["p90_ms"] for r in rows], color=[STAGE_COLOURS.get(r["stage"], "grey") for r in rows],
            edgecolor="black", linewidth=0.5, label="p90")
    ax.scatter([r["p50_ms"] for r in rows], y, color="white", edgecolor="black", zorder=3, s=25, label="p50")
    for yi, r in zip(y, rows):
        ax.text(r["p90_ms"], yi, f" {_ms_text(r['p90_ms'])} ms", va="center", fontsize=7.5)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['stage']}: {r['artifact']} ({r['runtime']}/{r['device']})" for r in rows], fontsize=8)
    lat = [r["p90_ms"] for r in rows]
    if lat and max(lat) / max(min(lat), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms): bar p90, dot p50")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def size_per_stage(rows: list[dict], title: str) -> bytes:
    import matplotlib.pyplot as plt
    seen: dict[str, dict] = {}
    for r in rows:
        if r.get("size_bytes") is not None:
            seen.setdefault(r["artifact"], r)
    arts = list(seen.values())
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(arts) + 1.4))
    y = list(range(len(arts)))[::-1]
    sizes = [r["size_bytes"] / 1e6 for r in arts]
    ax.barh(y, sizes, color=[STAGE_COLOURS.get(r["stage"], "grey") for r in arts], edgecolor="black", linewidth=0.5)
    for yi, mb in zip(y, sizes):
        ax.text(mb, yi, f" {mb:.2f} MB", va="center", fontsize=7.5)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['stage']}: {r['artifact']} ({r['format']}, {r['precision']})" for r in arts], fontsize=8)
    ax.set_xlabel("size on disk (MB = 10^6 bytes)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def confusion_matrices(view: dict) -> bytes | None:
    """The teacher's and the deployed model's confusion matrices side by side (counts of val
    images, rows the true class), each class's accuracy beside its row."""
    import matplotlib.pyplot as plt
    models = [(k, view[k]) for k in ("teacher", "deployed") if view.get(k)]
    if not models:
        return None
    classes = view["classes"]
    n = len(classes)
    side = max(3.2, 0.45 * n + 1.6)
    fig, axes = plt.subplots(1, len(models), figsize=(side * len(models) + 1.6, side), squeeze=False)
    for ax, (kind, m) in zip(axes[0], models):
        matrix = m["confusion"]
        ax.imshow(matrix, cmap="Blues")
        peak = max(max(r) for r in matrix) or 1
        if n <= 20:                                    # numbers stay readable up to about 20 classes
            for i in range(n):
                for j in range(n):
                    if matrix[i][j]:
                        ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=7.5,
                                color="white" if matrix[i][j] > peak / 2 else "black")
        labels = [f"{c} ({'-' if a is None else f'{a:.0f}%'})" for c, a in zip(classes, m["accuracy"])]
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels if n <= 40 else [], fontsize=7.5)
        ax.set_xticks(range(n))
        ax.set_xticklabels(classes if n <= 40 else [], fontsize=7.5, rotation=45, ha="right")
        ax.set_xlabel("predicted class")
        ax.set_title(f"{kind}: {m['artifact']}", fontsize=9)
    axes[0][0].set_ylabel("true class (val top-1 of the class)")
    fig.suptitle("Confusion matrices on val", fontsize=10)
    return _png(fig)


def render_all(report: dict, data_root: str | None = None) -> dict[str, bytes]:
    """The plots by name; empty when nothing was measured. With `data_root` (an ImageFolder
    tree), also pictures of the data audit's likely mislabels and near copies."""
    import matplotlib
    matplotlib.use("Agg")
    rows = _selected(report)
    if not rows:
        return {}
    where = f"{rows[0]['device_family']}, batch {rows[0]['batch']}"
    all_ok = [r for r in report["rows"] if r["status"] == "ok"]
    out = {"accuracy_vs_p90": accuracy_vs_latency(rows, f"Accuracy vs p90 latency ({where})"),
           "latency_per_stage": latency_per_stage(rows, f"Latency per stage ({where})"),
           "size_per_stage": size_per_stage(all_ok, "Size on disk per stage")}
    extra = {}
    if report.get("per_class"):
        extra["confusion"] = confusion_matrices(report["per_class"])
    audit = (report.get("upstream") or {}).get("data_audit")
    if audit and data_root:
        from pipeline.render.thumbnails import pairs_picture, suspects_picture
        extra["mislabel_suspects"] = suspects_picture(audit, data_root)
        extra["near_copies"] = pairs_picture(audit, data_root)
    return {**out, **{k: v for k, v in extra.items() if v}}
