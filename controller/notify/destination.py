"""One configured notification, ready to send: its notifier, its URL and signing secret (read from files when the
notification names them, re-read when rotated), and what may be shown of it.

A Slack or Teams webhook URL is a secret as a whole (its path is the credential): logs show only its scheme and
host. A generic webhook's URL is shown with credential-like query values hidden (controller.redact). Files are
read in the delivery workers, never in the tick.
"""

from __future__ import annotations

import urllib.parse

from controller.analysis.credentials import CredentialFile
from controller.notify.registry import NOTIFIERS, Notifier
from controller.redact import redact_text, redact_url, url_secrets
from controller.spec_hooks import check_webhook_url
from controller.spec_notify import Notification

GLOBAL_SCOPE = "*"


class DestinationError(Exception):
    """The URL or secret could not be read or used; the message holds neither."""


class Destination:
    """`notification` for the rollout named `scope`, or for every rollout (GLOBAL_SCOPE)."""

    def __init__(self, notification: Notification, scope: str = GLOBAL_SCOPE) -> None:
        self.notification = notification
        self.scope = scope
        self.notifier: Notifier = NOTIFIERS[notification.type]
        kind = f"{notification.type} notification URL"
        self._url_file = None if notification.url_file is None else CredentialFile(notification.url_file, kind)
        self._secret_file = (
            None if notification.secret_file is None else CredentialFile(notification.secret_file, "webhook secret")
        )

    @property
    def key(self) -> str:
        """Identifies the destination's lane (order and rate limit) in the delivery queue."""
        return f"{self.scope}/{self.notification.name}"

    @property
    def type(self) -> str:
        return self.notification.type

    def label(self) -> str:
        where = "every rollout" if self.scope == GLOBAL_SCOPE else f"rollout {self.scope}"
        return f"{self.notification.type} notification {self.notification.name!r} ({where})"

    def url(self) -> str:
        if self.notification.url is not None:
            return self.notification.url
        assert self._url_file is not None
        try:
            text = self._url_file.read()
        except Exception as exc:  # CredentialError names the file, never its content
            raise DestinationError(str(exc)) from None
        try:
            return check_webhook_url(text)
        except ValueError:
            raise DestinationError(f"the file {self._url_file.path} does not hold an http(s) URL") from None

    def secret(self) -> bytes | None:
        if self._secret_file is None or not self.notifier.signed:
            return None
        try:
            return self._secret_file.read().encode()
        except Exception as exc:
            raise DestinationError(str(exc)) from None

    def shown(self) -> str:
        """What logs may say of where it goes."""
        try:
            url = self.url()
        except DestinationError:
            return "(URL unreadable)"
        if self.notification.url_file is not None and self.notification.type != "webhook":
            parts = urllib.parse.urlsplit(url)
            return f"{parts.scheme}://{parts.hostname}/***"
        return redact_url(url)

    def redact(self, text: str) -> str:
        """`text` without this destination's URL (whole, and its path and query) or secret."""
        secrets: list[str] = []
        for source in (self._url_file, self._secret_file):
            if source is not None:
                secrets += source.secrets()
        for value in list(secrets) + ([self.notification.url] if self.notification.url else []):
            secrets += url_secrets(value)
            if self.notification.type != "webhook" or self.notification.url_file is not None:
                try:
                    parts = urllib.parse.urlsplit(value)
                except ValueError:
                    continue
                secrets += [p for p in (parts.path, parts.query) if len(p) > 1]
        return redact_text(text, secrets)
