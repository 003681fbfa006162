"""BENCHMARKS.md's scale section: one column per size (100 / 1,000 / 3,000 rollouts) and how each figure grows.

`merge` folds a run of some sizes (`bench.run --only scale [--rollouts N]`) into the sizes measured before, each
size keeping the date it was measured; `lines` renders the section (bench/run.py calls both).
"""

from __future__ import annotations

from typing import Any

TARGET_CORES = 0.2  # at 1,000 rollouts, averaged over the run


def merge(previous: dict[str, Any] | None, fresh: dict[str, dict[str, Any]], now: str) -> dict[str, Any]:
    """The scale figures after a run of the sizes in `fresh`: earlier sizes kept (older layouts dropped)."""
    sizes = dict(previous.get("sizes", {})) if isinstance(previous, dict) else {}
    kept = {size: {k: v for k, v in figures.items() if k != "per_due_tick"} for size, figures in fresh.items()}
    sizes.update({size: {**figures, "measured": now} for size, figures in kept.items()})  # per tick: the run's log
    return {"sizes": sizes, "measured": now}


def measured(section: dict[str, Any]) -> list[str]:
    return ["", f"Measured {section['measured']}."] if "measured" in section else []
def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return slope, mean_y - slope * mean_x


def growth(points: list[tuple[float, float]], unit: str, scale: float, per: str = "rollout") -> str:
    """How a figure grows with the number of rollouts, in words: constant, linear (slope per rollout, base), or
    faster/slower than linear (judged by the middle size against the line through the ends)."""
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return "one size measured"
    ys = [y for _, y in points]
    if max(ys) - min(ys) <= 0.05 * max(abs(y) for y in ys) or max(ys) == min(ys):
        return f"is constant: {ys[-1] * scale:.4g} {unit}"
    slope, base = _fit(points)
    shape = "linearly"
    if len(points) >= 3:
        (x0, y0), (x1, y1), (x2, y2) = points[0], points[len(points) // 2], points[-1]
        on_line = y0 + (y2 - y0) * (x1 - x0) / (x2 - x0)
        if on_line and abs(y1 - on_line) > 0.15 * abs(on_line):
            shape = "sub-linearly" if y1 > on_line else "faster than linearly"
    return f"grows {shape}: {slope * scale:.3g} {unit} per {per}, base {base * scale:.3g} {unit}"


def _ratio(points: list[tuple[float, float]]) -> str:
    """How much a figure grew between the smallest and largest size, against the number of rollouts."""
    if len(points) < 2 or not points[0][1]:
        return "measured at one size"
    (x0, y0), (x1, y1) = points[0], points[-1]
    return f"grows x{y1 / y0:.0f} for x{x1 / x0:.0f} rollouts ({y0:g} s to {y1:g} s)"


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "/".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def lines(section: dict[str, Any]) -> list[str]:
    """The section's markdown lines (none when no size was measured)."""
    sizes = section.get("sizes", {})
    ordered = sorted(sizes.values(), key=lambda s: s["rollouts"])
    if not ordered:
        return []
    counts = [s["rollouts"] for s in ordered]

    def series(key: str) -> list[tuple[float, float]]:
        return [(s["rollouts"], s[key]) for s in ordered if s.get(key) is not None]

    def verbs(s: dict[str, Any], kind: str) -> dict[str, object]:
        return {v: _cell(n) for v, n in s["kube_requests_per_tick"].get(kind, {}).items() if n != [0]}

    rows = [
        ("CPU s per judging tick (median)", "cpu_s_judging_median"),
        ("CPU s per tick where all rollouts step (median)", "cpu_s_stepping_median"),
        ("of which the garbage collector, judging / stepping tick", "gc_s"),
        ("CPU s per due tick once every rollout finished (median)", "cpu_s_settled_median"),
        ("CPU s per tick with nothing due (median)", "cpu_s_idle_median"),
        ("CPU s per 5 s rollout interval (run average)", "cpu_s_per_interval"),
        ("CPU cores, averaged over the run (worst case: all rollouts step at once every 10 s)", "cpu_cores"),
        ("CPU cores, judging (no rollout stepping; fast lane included)", "cpu_cores_judging"),
        ("fast lane: fetches during the run (one query each, whatever the number of rollouts)", "fast_lane_checks"),
        ("peak RSS (MB)", "peak_rss_mb"),
        ("Prometheus queries per due tick", "queries_per_due_tick"),
        ("of which the shared custom-gate template", "custom_queries_per_due_tick"),
        ("Prometheus answer bytes per due tick (median)", "answer_bytes_per_due_tick"),
        ("longest tick (wall s)", "wall_s_per_tick_max"),
    ]
    out = [
        "## Scale: one controller process, 100 / 1,000 / 3,000 concurrent rollouts",
        *measured(section),
        "",
        "Each size in a fresh process: in-memory Kubernetes API in its own process (bench/fast_apiserver.py), real "
        "Prometheus scraping a synthetic mesh of the same size (bench/fake_mesh.py, 1 s scrape). `runner.tick()` "
        "every 1 s as `ramp controller` calls it; the rollouts (5 s interval) start together, so every fifth tick "
        "handles all of them and every other such tick moves all of them (a worst case: a real fleet spreads its "
        "steps). CPU is the whole controller process (all threads); cores = CPU s / wall s over the run, leaving "
        "out the first tick (it creates every VirtualService and DestinationRule: reported on its own row). "
        f"Run length (s): {_cell([s['seconds'] for s in ordered])}; measured: "
        f"{_cell([s.get('measured') for s in ordered])}.",
        "",
        "| figure | " + " | ".join(f"{n:,} rollouts" for n in counts) + " |",
        "| --- |" + " --- |" * len(counts),
    ]
    for label, key in rows:
        cells = [_cell(s.get(key)) if key != "gc_s" else
                 f"{_cell(s.get('gc_s_judging_median'))} / {_cell(s.get('gc_s_stepping_median'))}" for s in ordered]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for kind, label in (("judging", "judging tick"), ("stepping", "stepping tick")):
        out.append(f"| Kubernetes requests per {label} | " + " | ".join(_cell(verbs(s, kind)) for s in ordered)
                     + " |")  # fmt: skip
    out.append("| first tick: requests, CPU s, wall s | " + " | ".join(
        f"{_cell(s['first_tick']['kube_requests'])}; {s['first_tick']['cpu_s']}; {s['first_tick']['wall_s']}"
        for s in ordered) + " |")  # fmt: skip
    out.append("| phases at the end | " + " | ".join(_cell(s["final_phases"]) for s in ordered) + " |")
    out += [
        "",
        f"- CPU per judging tick {growth(series('cpu_s_judging_median'), 'ms', 1000)}.",
        f"- CPU per stepping tick {growth(series('cpu_s_stepping_median'), 'ms', 1000)}.",
        f"- CPU cores over the run {growth(series('cpu_cores'), 'millicores', 1000)}.",
        "- CPU per tick with nothing due (median): "
        f"{_cell([s.get('cpu_s_idle_median') for s in ordered])} s. The fast lane's one query and e-process feeds "
        "run in such ticks when the rollouts' last look is a second old; right after a due tick that took longer "
        "than a second (1,000 and 3,000 rollouts) the next ones find none, so it ran "
        f"{_cell([s.get('fast_lane_checks') for s in ordered])} times.",
        f"- Peak RSS {growth(series('peak_rss_mb'), 'MB', 1, per='rollout')}.",
        f"- Prometheus queries per due tick are constant: {_cell(ordered[-1]['queries_per_due_tick'])} "
        "(requests, latency, the shared template, the raw counters of the statistical error gate); the fast lane "
        "adds at most one per second in between, whatever the number of rollouts.",
        f"- Prometheus answer bytes per due tick {growth(series('answer_bytes_per_due_tick'), 'kB', 0.001)}.",
        "- Kubernetes requests: one LIST per namespace per due tick; one PUT per rollout that moves; "
        "none otherwise (a GET per DestinationRule each `rule_recheck_seconds`, 60 s).",
        f"- Longest tick (wall) {growth(series('wall_s_per_tick_max'), 's', 1)}"
        + ("; over the 5 s interval at the largest size." if ordered[-1]["wall_s_per_tick_max"] > 5 else "."),
        "",
    ]
    for s in ordered:
        if s["rollouts"] == 1000:
            average = "meets" if s["cpu_cores"] < TARGET_CORES else "MISSES"
            judging = s.get("cpu_cores_judging")
            steady = "meets" if judging is not None and judging < TARGET_CORES else "MISSES"
            out += [
                f"CPU target (< {TARGET_CORES} core at 1,000 rollouts, fast lane included): a fleet judging "
                f"{steady} it ({judging} core); the run average, where every rollout steps at once every 10 s "
                f"(1,000 writes every other due tick, a worst case), {average} it ({s['cpu_cores']} core). "
                "A stepping tick's extra cost is the writes through the kubernetes client (about 1 ms of CPU each).",
                "",
            ]
    return out
