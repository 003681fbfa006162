"""Notifications (the `notifications:` list of a spec, or the controller's global list): Slack, Microsoft Teams or
a generic JSON webhook, on the events chosen. Sent from a queue outside the tick (see controller.notify).

A Slack or Teams webhook URL is a credential: give it in `url_file` (re-read when rotated); `url` is for
receivers without a secret in the URL (a generic webhook, signed with `secret_file`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.spec_hooks import WebhookUrl
from controller.spec_rules import DNS_LABEL_PATTERN

MAX_NOTIFICATIONS = 10
NotificationEvent = Literal["started", "step", "approval", "holding", "rolled_back", "failed", "promoted"]
ALL_EVENTS: tuple[NotificationEvent, ...] = ("started", "step", "approval", "holding", "rolled_back", "failed",
                                             "promoted")  # fmt: skip


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
    type: Literal["slack", "teams", "webhook"]
    url: WebhookUrl | None = Field(default=None, max_length=2048)
    url_file: str | None = Field(default=None, max_length=4096, description="File holding the URL (a secret)")
    secret_file: str | None = Field(default=None, max_length=4096, description="webhook: HMAC-SHA256 secret file")
    events: list[NotificationEvent] = Field(default_factory=lambda: list(ALL_EVENTS), min_length=1, max_length=7)

    @model_validator(mode="after")
    def _one_url(self) -> Notification:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of url and url_file")
        if self.type != "webhook" and self.secret_file is not None:
            raise ValueError("secret_file signs generic webhooks only (type: webhook)")
        return self
