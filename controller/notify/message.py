"""What a transition says, in words shared by every format: a headline (what happened to which rollout), the
reason (why: a rollback names the breaching gate and its value), and facts (step, traffic, gates).

Every text here may hold hostile bytes (a gate reason quotes Prometheus, a spec names versions): it is cut to a
bound and stripped of control characters; each format escapes it for its own markup.
"""

from __future__ import annotations

from controller.engine.ports import Transition, TransitionKind

MAX_REASON = 1500
MAX_FACT = 300

_WHAT: dict[TransitionKind, str] = {
    "started": "started",
    "step": "moved to the next step",
    "approval": "is waiting for approval",
    "paused": "was paused",
    "resumed": "was resumed",
    "holding": "is holding: no data",
    "rolled_back": "was rolled back",
    "failed": "failed",
    "promoted": "was promoted",
    "restarted": "starts over (spec changed)",
}
# Slack/Teams colours: bad news stands out.
SEVERITY: dict[TransitionKind, str] = {
    "rolled_back": "bad", "failed": "bad", "holding": "warning", "approval": "warning", "paused": "warning",
    "promoted": "good",
}  # fmt: skip


def clean(text: str, limit: int) -> str:
    """One printable line of at most `limit` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def rollout_label(t: Transition) -> str:
    return clean(f"{t.namespace}/{t.rollout}", 200)


def headline(t: Transition) -> str:
    """E.g. `prod/shop was rolled back (v2, step 2/4)`."""
    where = ", ".join(x for x in (clean(t.target, 63), t.step_label) if x)
    return f"{rollout_label(t)} {_WHAT[t.kind]} ({where})"


def reason(t: Transition) -> str:
    return clean(t.reason or t.phase.value, MAX_REASON)


def traffic(t: Transition) -> str:
    return clean(", ".join(f"{version} {weight}%" for version, weight in t.weights), MAX_FACT) or "none"


def gate_lines(t: Transition) -> list[str]:
    """One line per gate of the last evaluation: `error_rate: fail, 20.0 (stable 0.1)`."""
    lines = []
    for gate in t.gates[:10]:
        value = "no value" if gate.value is None else f"{gate.value:.4g}"
        stable = "" if gate.stable_value is None else f" (stable {gate.stable_value:.4g})"
        lines.append(clean(f"{gate.gate}: {gate.verdict}, {value}{stable}", MAX_FACT))
    return lines


def facts(t: Transition) -> list[tuple[str, str]]:
    """(title, value) pairs for a card."""
    found = [("Rollout", rollout_label(t)), ("Phase", t.phase.value)]
    if t.step_label:
        found.append(("Step", t.step_label))
    found.append(("Traffic", traffic(t)))
    gates = gate_lines(t)
    if gates:
        found.append(("Gates", "; ".join(gates)))
    return found
