"""Webhooks at the points of a rollout (the `hooks:` list of a spec).

- `pre-step`: called before a step starts (or only before the steps listed in `steps`, 1-based); a 2xx answer lets
  the step start, anything else holds the rollout before it (the progress deadline then fails it);
- `step-gate`: called on each tick of a step (of `steps`); a failing answer counts as a failed check;
- `confirm-promotion`: called before the promotion; 2xx lets it happen, anything else holds;
- `post-rollout`: called once the rollout is promoted, rolled back or failed (from a queue, never in the tick).

Every call has a total `timeout`, `retries` with backoff, and (with `secret_file`) an HMAC-SHA256 signature of the
body in the `X-Ramp-Signature-256` header (controller.webhook_signing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from controller.spec_rules import DNS_LABEL_PATTERN, duration_between, finite_number, format_seconds

if TYPE_CHECKING:
    from controller.spec import RolloutSpec

MAX_HOOKS = 20
MIN_HOOK_TIMEOUT = 0.1
MAX_HOOK_TIMEOUT = 60.0
HookType = Literal["pre-step", "step-gate", "confirm-promotion", "post-rollout"]
_DURATION_SCHEMA = WithJsonSchema({"type": ["string", "number"], "description": "e.g. '10s', '500ms'"})
HookTimeout = Annotated[float, BeforeValidator(duration_between(MIN_HOOK_TIMEOUT, MAX_HOOK_TIMEOUT)), _DURATION_SCHEMA]


def check_webhook_url(url: str) -> str:
    """http(s)://host[:port]/path, printable, no credentials (a secret belongs in secret_file, never in a spec)."""
    from urllib.parse import urlsplit

    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("url has spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials: put a secret in secret_file (HMAC-signed requests)")
    if _link_local(parts.hostname):
        raise ValueError(
            "url points at a link-local address (e.g. a cloud metadata service): no hook or notification lives there"
        )
    return url


def _link_local(host: str) -> bool:
    """A literal link-local address (169.254.0.0/16, fe80::/10): where cloud metadata services answer. A spec author
    (with self-service RampRollouts, any namespace editor) must not make the controller call it (SSRF)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_link_local
    except ValueError:
        return host.lower().rstrip(".") in ("metadata.google.internal", "metadata")


WebhookUrl = Annotated[
    str,
    AfterValidator(check_webhook_url),
    WithJsonSchema({"type": "string", "maxLength": 2048, "pattern": "^https?://", "description": "http(s) URL"}),
]


class Hook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
    type: HookType
    url: WebhookUrl = Field(max_length=2048)
    steps: list[Annotated[int, BeforeValidator(finite_number), Field(ge=1, le=50)]] | None = Field(
        default=None, description="pre-step / step-gate: the steps (1-based) it applies to; default every step"
    )
    timeout: HookTimeout = Field(
        default=10.0,
        description=f"Total time for one call, retries included ({format_seconds(MIN_HOOK_TIMEOUT)} to "
        f"{format_seconds(MAX_HOOK_TIMEOUT)})",
    )
    retries: Annotated[int, BeforeValidator(finite_number)] = Field(default=2, ge=0, le=10)
    secret_file: str | None = Field(
        default=None, max_length=4096, description="File holding the HMAC-SHA256 secret (re-read when rotated)"
    )
    metadata: dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=20, description="Sent as is in every payload"
    )

    @model_validator(mode="after")
    def _steps_fit_the_type(self) -> Hook:
        """`steps` says which steps a pre-step or step-gate hook applies to; the other types have one point."""
        if self.steps is not None and self.type not in STEP_TYPES:
            raise ValueError(f"steps applies to pre-step and step-gate hooks only, not {self.type}")
        if self.steps is not None and len(set(self.steps)) != len(self.steps):
            raise ValueError("steps lists a step twice")
        return self


STEP_TYPES = ("pre-step", "step-gate")
Path = tuple[str | int, ...]


def hook_problems(spec: RolloutSpec) -> list[tuple[Path, str]]:
    """Cross-field problems of `hooks` as (field path, reason): names must be unique (they key the answers and
    the reasons), and `steps` must name steps the rollout has (default steps included)."""
    problems: list[tuple[Path, str]] = []
    seen: set[str] = set()
    count = len(spec.effective_steps)
    for i, hook in enumerate(spec.hooks):
        if hook.name in seen:
            problems.append((("hooks", i, "name"), f"duplicate hook name {hook.name!r}"))
        seen.add(hook.name)
        for j, step in enumerate(hook.steps or ()):
            if step > count:
                why = f"step {step} does not exist: the rollout has {count} steps"
                problems.append((("hooks", i, "steps", j), why))
    return problems
