"""The JSON body every hook receives (version 1). Stable: fields are only ever added, never renamed.

    {
      "version": 1,
      "hook": "acceptance",              # the hook's name in the spec
      "type": "pre-step",                # pre-step | step-gate | confirm-promotion | post-rollout
      "rollout": "reviews", "namespace": "shop", "service": "reviews", "target": "v2",
      "phase": "HeaderTest",             # the rollout's phase now (post-rollout: Promoted | RolledBack | Failed)
      "step": 2,                         # 1-based step concerned (see below); 0 = before the first step
      "steps": 4,                        # number of steps
      "weights": {"v1": 90, "v2": 10},   # percentages per version of the routing concerned
      "header_routes": [{"header": "x-version", "match": "exact", "value": "v2", "version": "v2"}],
      "reason": "step 1/4: header x-version: v2; gates pass, 0s left",
      "metadata": {"team": "shop"},      # the hook's metadata, as written
      "at": "2026-11-26T10:00:00Z"       # RFC 3339, UTC
    }

The step and routing concerned: pre-step N = step N and the routing it is about to apply; step-gate N = the
current step and the routing in place; confirm-promotion = the last step and the promoted routing (target 100%);
post-rollout = the step where the rollout ended and its final routing (promoted or baseline).
The body is signed as sent (controller.webhook_signing): receivers must verify the raw bytes, not a re-encoding.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from controller.engine.routing_model import DesiredRouting
from controller.spec import RolloutSpec
from controller.spec_hooks import Hook

PAYLOAD_VERSION = 1
MAX_REASON = 2048


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_payload(
    hook: Hook,
    spec: RolloutSpec,
    *,
    phase: str,
    step: int,
    steps: int,
    routing: DesiredRouting,
    reason: str,
    at: float,
) -> dict[str, Any]:
    return {
        "version": PAYLOAD_VERSION,
        "hook": hook.name,
        "type": hook.type,
        "rollout": spec.rollout_name,
        "namespace": spec.namespace,
        "service": spec.service,
        "target": spec.target,
        "phase": phase,
        "step": max(0, step),
        "steps": steps,
        "weights": dict(routing.weights),
        "header_routes": [
            {"header": r.header, "match": r.match, "value": r.value, "version": r.version}
            for r in routing.header_routes
        ],
        "reason": reason[:MAX_REASON],
        "metadata": dict(hook.metadata),
        "at": rfc3339(at),
    }


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, keys in the documented order: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
