"""Run every benchmark and write BENCHMARKS.md (machine, date, figures, how to reproduce).

    .venv/bin/python -m bench.run                 # everything (~30 min)
    .venv/bin/python -m bench.run --runs 3 --only fault   # a quicker subset

With --only, the other sections are kept from the existing BENCHMARKS.md (its raw results) and
each section states when it was measured.

Ramp's fault-to-rollback runs go one at a time; the Flagger-equivalent runs (each lasts minutes
by construction: 60 s interval x 5 failed checks) go in parallel stacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import fault_to_rollback as ftr
from bench import healthy_rollout, image, machine, scale
from controller.observability import configure_logging

REPO = Path(__file__).resolve().parent.parent


def fault_section(runs: int, flagger_runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in (ftr.HARD, ftr.SOFT):
        ramp_runs = []
        for i in range(runs):
            result = ftr.one_run(scenario, ftr.RAMP_GATES, warmup=20, deadline=120, seed=100 + i)
            print(f"bench: ramp {scenario.name} run {i + 1}/{runs}: {result}", file=sys.stderr, flush=True)
            ramp_runs.append(result)
        results[f"ramp / {scenario.name}"] = ftr.summarize(ramp_runs)
    with ThreadPoolExecutor(max_workers=2 * flagger_runs) as pool:
        futures = {
            (scenario.name, i): pool.submit(ftr.one_run, scenario, ftr.FLAGGER_GATES, 70, 600, 200 + i)
            for scenario in (ftr.HARD, ftr.SOFT)
            for i in range(flagger_runs)
        }
        for scenario in (ftr.HARD, ftr.SOFT):
            flagger = [futures[(scenario.name, i)].result() for i in range(flagger_runs)]
            print(f"bench: flagger-equivalent {scenario.name}: {flagger}", file=sys.stderr, flush=True)
            results[f"flagger-equivalent / {scenario.name}"] = ftr.summarize(flagger)
    return results


def scale_verdict(s: dict[str, Any]) -> list[str]:
    """Say plainly which CPU target holds: judging ticks, and the run average with its worst-case ticks."""
    quiet_ok = s["cpu_cores_quiet"] < 0.2
    average_ok = s["cpu_cores_time_averaged"] < 0.2
    stepping = sum(1 for t in s["per_tick"][1:] if t["writes"] > 0)
    return [
        f"CPU target (< 0.2 core): judging ticks {'meet' if quiet_ok else 'MISS'} it "
        f"({s['cpu_cores_quiet']} core); the run average {'meets' if average_ok else 'MISSES'} it "
        f"({s['cpu_cores_time_averaged']} core). The average leaves out the first tick (every VirtualService and "
        f"DestinationRule created) and includes {stepping} ticks on which every rollout steps at once, a worst "
        "case: the rollouts start together, so each of those ticks writes all of them; a real fleet spreads "
        "its steps.",
        "",
    ]


def measured(section: dict[str, Any]) -> list[str]:
    return ["", f"Measured {section['measured']}."] if "measured" in section else []


def previous_figures(path: Path) -> dict[str, Any]:
    """The raw results embedded in an earlier BENCHMARKS.md, so a partial re-run keeps the rest."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if "```json\n" not in text:
        return {}
    figures: dict[str, Any] = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    return figures


def render(info: dict[str, str], figures: dict[str, Any]) -> str:
    lines = [
        "# Ramp benchmarks",
        "",
        f"Written {info['date']} on: {info['cpu']}, {info['memory']}, {info['os']}, "
        f"Python {info['python']}, Envoy {info['envoy']}, {info['prometheus']}.",
        "",
        "Reproduce: `.ci/bootstrap.sh && .venv/bin/python -m bench.run` (writes this file).",
        "",
    ]
    if "fault" in figures:
        lines += [
            "## Fault-to-rollback (local stack: real Envoy + Prometheus, 1 s scrape)",
            *measured(figures["fault"]),
            "",
            "100 rps, v2 held at 10%. After a healthy warm-up the fault is switched on inside v2; the time runs",
            "until Envoy confirms the rollback routing. Failed requests = 5xx answers users got in that window.",
            "",
            "| configuration / fault | runs | rolled back | median s | max s | median failed req | max failed req |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in figures["fault"].items():
            if not isinstance(row, dict):
                continue  # "measured"
            lines.append(
                f"| {name} | {row['runs']} | {row['rolled_back']} | {row['median_s']} | {row['max_s']} | "
                f"{row['median_failed_requests']} | {row['max_failed_requests']} |"
            )
        lines += [
            "",
            "Ramp: error gate in mode both (anytime-valid e-process vs stable, alpha 0.01, tolerance 1.2;",
            "guardrail max 10 %), 5 s tick, 10 s window.",
            "The fault is switched on at the same point of the tick cycle in every run (warm-up = whole",
            "intervals), so the spread is small; a fault landing just after a tick can add up to one interval.",
            "Flagger-equivalent, driven by Ramp: 60 s interval and window, success rate >= 99 % (error max 1 %),",
            "rollback after 5 failed checks (Flagger's `threshold: 5`).",
            "",
        ]
    if "healthy" in figures:
        h = figures["healthy"]
        lines += [
            "## Healthy rollout with defaults",
            *measured(figures["healthy"]),
            "",
            f"Outcome {h['outcome']} after {h['total_s']} s (the plan's step durations add up to "
            f"{h['planned_minimum_s']:.0f} s; the rest is tick granularity and waiting for the window).",
            "",
            "| phase | step | at s |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {s['phase']} | {s['step']} | {s['at_s']} |" for s in h["steps"]]
        lines.append("")
    if "scale" in figures:
        s = figures["scale"]
        lines += [
            "## Scale: one controller process, concurrent rollouts",
            *measured(s),
            "",
            f"{s['rollouts']} rollouts, {s['ticks']} ticks at 5 s; in-memory Kubernetes API in its own process "
            "(bench/fast_apiserver.py: kmock's emulator is O(N) per request), real Prometheus scraping a "
            "synthetic mesh of the same size.",
            "",
            "| figure | value | target |",
            "| --- | --- | --- |",
            f"| Prometheus queries per tick (max) | {s['queries_per_tick_max']} | <= 3 per metric kind |",
            f"| of which for the shared custom-gate template (max) | {s.get('custom_queries_per_tick_max', '-')} "
            "| 1, whatever the number of rollouts |",
            f"| Kubernetes writes, first tick (creates) | {s['writes_first_tick']} | - |",
            f"| Kubernetes writes per tick, judging only | {s['writes_per_tick_quiet']} | only real changes |",
            f"| Kubernetes writes per tick, all stepping at once | {s['writes_per_tick_stepping']} | one per move |",
            f"| CPU s per tick, judging only (median) | {s['cpu_s_quiet_median']} | - |",
            f"| CPU s per tick, all rollouts stepping at once (median) | {s['cpu_s_stepping_median']} | - |",
            f"| CPU cores at 5 s ticks, judging only | {s['cpu_cores_quiet']} | < 0.2 |",
            f"| CPU cores at 5 s ticks, averaged over the run | {s['cpu_cores_time_averaged']} | < 0.2 |",
            f"| longest tick (wall s) | {s['wall_s_per_tick_max']} | < 5 |",
            f"| peak RSS | {s['peak_rss_mb']} MB | < 200 MB |",
            f"| phases at the end | {s['final_phases']} | - |",
            "",
            *scale_verdict(s),
        ]
    lines += [
        "<details><summary>Raw results</summary>",
        "",
        "```json",
        json.dumps(figures, indent=1, default=str),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--runs", type=int, default=10, help="fault-to-rollback runs per scenario (Ramp)")
    parser.add_argument("--flagger-runs", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--only", choices=("fault", "healthy", "scale"), action="append")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    wanted = set(args.only or ("fault", "healthy", "scale"))
    figures = previous_figures(args.output) if args.only else {}
    now = machine.describe()["date"]
    if "scale" in wanted:
        figures["scale"] = {**scale.run(args.rollouts), "measured": now}
    if "healthy" in wanted:
        figures["healthy"] = {**healthy_rollout.run(), "measured": now}
    if "fault" in wanted:
        figures["fault"] = {**fault_section(args.runs, args.flagger_runs), "measured": now}
    kept_image_section = image.existing_section(args.output)  # measured by `python -m bench.image`
    args.output.write_text(render(machine.describe(), figures))
    if kept_image_section:
        image.write_section(args.output, kept_image_section)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
