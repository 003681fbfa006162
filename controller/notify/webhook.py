"""Generic JSON webhook: the transition as data, for any receiver (a chat bridge, an incident tool, a script).

Payload (`"schema": "ramp.notification/v1"`):

    {"schema": "ramp.notification/v1", "event": "rolled_back", "message": "prod/shop was rolled back (v2, ...)",
     "rollout": {"name": "shop", "namespace": "prod", "service": "shop", "target": "v2"},
     "phase": "RolledBack", "from_phase": "Progressing", "step": 2, "steps": 4,
     "reason": "gate failed: error_rate of v2 is 20.00% > max 5.00%", "at": 1767225600.0,
     "weights": {"v1": 100, "v2": 0},
     "gates": [{"gate": "error_rate", "verdict": "fail", "value": 20.0, "stable_value": 0.1, "reason": "..."}]}

`step` is 1-based (0 before the first step; steps + 1 once promoted). With `secret_file`, the body is signed:
`X-Ramp-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (controller.webhook_signing; the receiver
recomputes it over the raw body). Non-finite gate values are sent as null (JSON has no NaN).
"""

from __future__ import annotations

import json
import math

from controller.engine.ports import Transition
from controller.notify.message import MAX_FACT, MAX_REASON, clean, headline

SCHEMA = "ramp.notification/v1"


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def payload(t: Transition) -> dict[str, object]:
    return {
        "schema": SCHEMA,
        "event": t.kind,
        "message": headline(t),
        "rollout": {"name": t.rollout, "namespace": t.namespace, "service": t.service, "target": t.target},
        "phase": t.phase.value,
        "from_phase": t.from_phase.value,
        "step": t.step + 1,
        "steps": t.steps,
        "reason": clean(t.reason, MAX_REASON),
        "at": t.at,
        "weights": dict(t.weights),
        "gates": [
            {"gate": g.gate, "verdict": g.verdict, "value": _number(g.value), "stable_value": _number(g.stable_value),
             "reason": clean(g.reason, MAX_FACT)}
            for g in t.gates
        ],
    }  # fmt: skip


def render(t: Transition) -> bytes:
    return json.dumps(payload(t), ensure_ascii=False, allow_nan=False).encode()
