"""What a rollout report is made of, whatever its source (a local state directory's timeline, or a cluster
rollout's state plus Prometheus range queries): pure data, no I/O.

A source produces `ReportInputs`: the rollout's identity, its gates' thresholds, one `TickSample` per observed
moment (weights, each gate's value for the new and the stable version, e-values), the phase history and the rows of
the summary table. `controller.report.build` turns them into charts; `controller.report.html` renders them.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.analysis.gate_thresholds import GateThreshold

MAX_TEXT = 2000  # a reason longer than this is cut (state files and Prometheus answers are not trusted)
MAX_NAME = 253
Text = Annotated[str, Field(max_length=100_000)]


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def finite_or_none(value: float | None) -> float | None:
    """NaN, infinities and non-numbers become None: a gap in a chart, never a point at infinity."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class GateSample(BaseModel):
    """One gate at one moment: the new version's value, stable's, and the e-value of a statistical gate."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    gate: Annotated[str, Field(max_length=MAX_NAME)]
    verdict: Annotated[str, Field(max_length=16)] = ""
    value: float | None = None
    stable_value: float | None = None
    e_value: float | None = None
    e_limit: float | None = None

    @field_validator("value", "stable_value", "e_value", "e_limit", mode="before")
    @classmethod
    def _finite(cls, raw: object) -> float | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError("not a number")
        return finite_or_none(raw)


class TickSample(BaseModel):
    """The rollout at one moment: phase, step, weights per version, the header route, the gates."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    at: float = Field(allow_inf_nan=False, ge=0)
    phase: Annotated[str, Field(max_length=32)] = ""
    step: int = Field(default=-1, ge=-1, le=10_000)
    weights: dict[Annotated[str, Field(max_length=MAX_NAME)], Annotated[int, Field(ge=0, le=100)]] = Field(
        default_factory=dict, max_length=64
    )
    header_version: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    verdict: Annotated[str, Field(max_length=16)] | None = None
    reason: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    gates: list[GateSample] = Field(default_factory=list, max_length=64)

    @field_validator("reason", mode="before")
    @classmethod
    def _clip_reason(cls, raw: object) -> object:
        return clip(raw) if isinstance(raw, str) else raw


class PhaseMark(BaseModel):
    """A phase change (from the state's history): drawn as a marked line with its reason."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    at: float = Field(allow_inf_nan=False, ge=0)
    phase: Annotated[str, Field(max_length=32)]
    step: int = Field(default=-1, ge=-1, le=10_000)
    reason: Annotated[str, Field(max_length=MAX_TEXT)] = ""

    @field_validator("reason", mode="before")
    @classmethod
    def _clip_reason(cls, raw: object) -> object:
        return clip(raw) if isinstance(raw, str) else raw


class ReportInputs(BaseModel):
    """Everything one report shows, from whichever source."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    rollout: str
    namespace: str
    service: str
    target: str
    stable: tuple[str, ...] = ()  # the versions the new one is compared with
    versions: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()  # step labels (e.g. "header x-version=v2", "10%")
    thresholds: tuple[GateThreshold, ...] = ()
    gate_units: dict[str, str] = Field(default_factory=dict)  # gate -> "%", "ms" or ""
    higher_is_better: tuple[str, ...] = ()  # custom gates whose stable_margin bounds how much LOWER they may be
    samples: tuple[TickSample, ...] = ()
    phases: tuple[PhaseMark, ...] = ()
    final_phase: str = ""
    final_reason: str = ""
    summary: tuple[tuple[str, str], ...] = ()  # extra rows of the summary table (label, value)
    source: str = ""  # where the data came from, shown in the report
    notes: tuple[str, ...] = ()  # what could not be read, e.g. unreadable timeline lines
