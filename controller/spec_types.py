"""The field types of rollout specs (annotated with their validators and JSON Schema), shared by the spec models.

Bounds and rules come from controller.spec_rules; the models are in controller.spec.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from controller.spec_rules import (
    DNS_LABEL_PATTERN,
    MAX_INTERVAL,
    MAX_MISSING_DATA_TIMEOUT,
    MAX_PROGRESS_DEADLINE,
    MAX_STEP_DURATION,
    MAX_WINDOW,
    MIN_INTERVAL,
    MIN_PROGRESS_DEADLINE,
    MIN_WINDOW,
    check_gateway,
    check_header_name,
    check_host,
    check_version_name,
    duration_between,
    finite_number,
)

_DURATION_SCHEMA = WithJsonSchema({"type": ["string", "number"], "description": "e.g. '30s', '2m', '1h30m', '500ms'"})
StepDuration = Annotated[float, BeforeValidator(duration_between(0.0, MAX_STEP_DURATION)), _DURATION_SCHEMA]
Interval = Annotated[float, BeforeValidator(duration_between(MIN_INTERVAL, MAX_INTERVAL)), _DURATION_SCHEMA]
Window = Annotated[float, BeforeValidator(duration_between(MIN_WINDOW, MAX_WINDOW)), _DURATION_SCHEMA]
Timeout = Annotated[float, BeforeValidator(duration_between(0.0, MAX_MISSING_DATA_TIMEOUT)), _DURATION_SCHEMA]
ProgressDeadline = Annotated[
    float, BeforeValidator(duration_between(MIN_PROGRESS_DEADLINE, MAX_PROGRESS_DEADLINE)), _DURATION_SCHEMA
]
Int = Annotated[int, BeforeValidator(finite_number)]
Number = Annotated[float, BeforeValidator(finite_number)]
VersionName = Annotated[
    str,
    AfterValidator(check_version_name),
    WithJsonSchema({"type": "string", "pattern": DNS_LABEL_PATTERN, "maxLength": 63, "description": "DNS label"}),
]
DnsName = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
HeaderName = Annotated[
    str,
    AfterValidator(check_header_name),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$",
            "maxLength": 128,
            "description": "lowercase header token; not a pseudo-header, host, hop-by-hop or Envoy-set header",
        }
    ),
]
Host = Annotated[
    str,
    AfterValidator(check_host),
    WithJsonSchema({"type": "string", "maxLength": 253, "description": "RFC 1123 DNS name, no wildcard"}),
]

_DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
Gateway = Annotated[
    str,
    AfterValidator(check_gateway),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": rf"^(mesh|([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?{_DNS_NAME})$",
            "maxLength": 317,
            "description": "An Istio Gateway as [namespace/]name, or mesh (the sidecars)",
        }
    ),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
