"""The verdicts of the gates: one GateResult per gate, a GateReport per tick (re-exported by `gates`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controller.analysis.statistical_gate import GateEvidence


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no-data"
    HOLD = "hold"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    value: float | None  # the target's value in the window; also below min_requests (then NO_DATA: not judged)
    stable_value: float | None
    reason: str
    e_value: float | None = None  # statistical gates: the e-value now
    e_limit: float | None = None  # ... and the e-value that rolls back (K / alpha)


@dataclass(frozen=True)
class GateReport:
    results: tuple[GateResult, ...]
    evidence: Mapping[str, GateEvidence] = field(default_factory=dict)  # the e-processes after this tick

    @property
    def verdict(self) -> Verdict:
        """FAIL, else NO_DATA (its clock runs even while another gate holds), else HOLD, else PASS."""
        verdicts = {r.verdict for r in self.results}
        for verdict in (Verdict.FAIL, Verdict.NO_DATA, Verdict.HOLD):
            if verdict in verdicts:
                return verdict
        return Verdict.PASS

    def reasons(self, verdict: Verdict) -> str:
        return "; ".join(r.reason for r in self.results if r.verdict == verdict)
