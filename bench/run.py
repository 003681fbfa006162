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
from bench import healthy_rollout, image, machine, scale, scale_report, sharded
from controller.observability import configure_logging

REPO = Path(__file__).resolve().parent.parent


RAMP_INTERVAL, FLAGGER_INTERVAL = 5.0, 60.0


def fault_section(runs: int, flagger_runs: int) -> dict[str, Any]:
    """Every run draws its fault's moment uniformly over its configuration's tick cycle (seeded per run)."""
    results: dict[str, Any] = {}
    for scenario in (ftr.HARD, ftr.SOFT):
        ramp_runs = []
        for i in range(runs):
            warmup, phase = ftr.warmup_for(RAMP_INTERVAL, 2, seed=1000 + i)
            result = ftr.one_run(scenario, ftr.RAMP_GATES, warmup=warmup, deadline=120, seed=100 + i, phase=phase)
            print(f"bench: ramp {scenario.name} run {i + 1}/{runs}: {result}", file=sys.stderr, flush=True)
            ramp_runs.append(result)
        results[f"ramp / {scenario.name}"] = ftr.summarize(ramp_runs)
    with ThreadPoolExecutor(max_workers=2 * flagger_runs) as pool:
        futures = {}
        for scenario in (ftr.HARD, ftr.SOFT):
            for i in range(flagger_runs):
                warmup, phase = ftr.warmup_for(FLAGGER_INTERVAL, 1, seed=2000 + i)
                futures[(scenario.name, i)] = pool.submit(
                    ftr.one_run, scenario, ftr.FLAGGER_GATES, warmup + 10, 600, 200 + i, phase
                )
        for scenario in (ftr.HARD, ftr.SOFT):
            flagger = [futures[(scenario.name, i)].result() for i in range(flagger_runs)]
            print(f"bench: flagger-equivalent {scenario.name}: {flagger}", file=sys.stderr, flush=True)
            results[f"flagger-equivalent / {scenario.name}"] = ftr.summarize(flagger)
    return results


FAULT_TARGETS = {"hard": {"p50": 2.0, "p90": 3.0}, "soft": {"p50": 25.0}}


def fault_verdict(fault: dict[str, Any]) -> list[str]:
    """Each target of issue 14 against the Ramp rows, said plainly."""
    lines = []
    for kind, targets in FAULT_TARGETS.items():
        row = next((r for n, r in fault.items() if n.startswith("ramp / ") and n.split("/ ")[1].startswith(kind)), None)
        if not isinstance(row, dict) or "seconds" not in row:
            continue
        for q, bound in targets.items():
            value = row["seconds"][q]
            ok = value is not None and value <= bound and row["rolled_back"] == row["runs"]
            lines.append(f"- {kind} fault {q} {value} s: target <= {bound:g} s {'met' if ok else 'MISSED'}")
        lines.append(f"- {kind} fault: false alarms before the fault {row['false_alarms']} of {row['runs']} runs")
    return lines


def fault_lines(fault: dict[str, Any]) -> list[str]:
    lines = [
        "| configuration / fault | runs | rolled back | false alarms | s p50 | s p90 | s max | "
        "failed req p50 | failed req p90 | failed req max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in fault.items():
        if not isinstance(row, dict) or "seconds" not in row:
            continue  # "measured", or an older run's format
        t, f = row["seconds"], row["failed_requests"]
        lines.append(
            f"| {name} | {row['runs']} | {row['rolled_back']} | {row['false_alarms']} | {t['p50']} | {t['p90']} | "
            f"{t['max']} | {f['p50']} | {f['p90']} | {f['max']} |"
        )
    return lines


def sharded_lines(section: dict[str, Any]) -> list[str]:
    """Three replicas, a shard each: per replica and for the whole."""
    lines = [
        "## Sharded: 3,000 rollouts over three controller replicas",
        *measured(section),
        "",
        f"{section['rollouts']:,} rollouts, {section['shards']} shards, three `ramp controller --shards 3` replicas as "
        "processes (bench/sharded.py: a Lease per shard, client-go's default timings, the same spec, API and mesh as "
        "the scale curve), all on this machine's cores at once, for "
        f"{section['seconds']:g} s. Every rollout's final phase is read back from the API.",
        "",
        "| replica | shards held | rollouts held | CPU s per judging tick | CPU s per stepping tick | "
        "CPU s per 5 s interval | longest tick (wall s) | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in section["replicas"]:
        lines.append(
            f"| {r['replica']} | {r['shards_held']} | {r['rollouts_held']} | {r['cpu_s_judging_median']} | "
            f"{r['cpu_s_stepping_median']} | {r['cpu_s_per_interval']} | {r['wall_s_per_tick_max']} | "
            f"{r['peak_rss_mb']} |"
        )
    lines += [
        "",
        f"All finished: {section['all_finished']} ({section['final_phases']}); rollouts ticked by two replicas: "
        f"{section['rollouts_ticked_by_two_replicas']}; failed replicas: {len(section['failed_replicas'])}.",
        "",
    ]
    return lines


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
            "100 rps, v2 held at 10%. After a healthy warm-up the fault is switched on inside v2 at a moment drawn",
            "uniformly over the configuration's tick cycle (seeded per run: whole intervals plus a uniform fraction of",
            "one); the time runs until Envoy confirms the rollback routing. Failed requests = 5xx answers users got",
            "in that window. Percentiles are nearest-rank over the runs that rolled back after the fault.",
            "",
            *fault_lines(figures["fault"]),
            "",
            "Ramp: error gate in mode both (anytime-valid e-process vs stable, alpha 0.01, tolerance 1.2;",
            "guardrail max 10 %), 5 s tick, 10 s window; the e-process is also fed by the fast lane every second",
            "between ticks (controller/engine/fast_lane.py), driven like `ramp run` (an iteration every 0.25 s).",
            "Warm-up before the fault: 10-15 s of healthy traffic at 10 %. Healthy traffic is evidence for \"no",
            "worse\": after a long healthy period the e-process starts lower and a soft fault takes longer to show",
            "(a hard fault also breaches the 10 % guardrail within the 10 s window).",
            "Flagger-equivalent, driven by Ramp: 60 s interval and window, success rate >= 99 % (error max 1 %),",
            "rollback after 5 failed checks (Flagger's `threshold: 5`); its runs go in parallel stacks.",
            "",
            "Targets (1 s scrape, 100 rps, new version at 10 %):",
            *fault_verdict(figures["fault"]),
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
        lines += scale_report.lines(figures["scale"])
    if "sharded" in figures:
        lines += sharded_lines(figures["sharded"])
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
    parser.add_argument("--runs", type=int, default=20, help="fault-to-rollback runs per scenario (Ramp)")
    parser.add_argument("--flagger-runs", type=int, default=3)
    parser.add_argument("--rollouts", type=int, help="scale: this size only (default: 100, 1,000 and 3,000)")
    parser.add_argument("--only", choices=("fault", "healthy", "scale", "sharded"), action="append")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    wanted = set(args.only or ("fault", "healthy", "scale", "sharded"))
    figures = previous_figures(args.output) if args.only else {}
    now = machine.describe()["date"]
    if "scale" in wanted:
        sizes = (args.rollouts,) if args.rollouts else scale.SIZES
        figures["scale"] = scale_report.merge(figures.get("scale"), scale.curve(sizes), now)
    if "sharded" in wanted:
        figures["sharded"] = {**sharded.measure(), "measured": now}
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
