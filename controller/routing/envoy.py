"""The file-based RDS router for the local data plane (rendering lives in `envoy_render`).

The local data plane runs exactly the routing Ramp would send to Istio: the same `DesiredRouting`
is rendered into an Envoy RouteConfiguration (`controller.routing.envoy_render`), delivered to Envoy
through a watched RDS file, confirmed through Envoy's admin `/config_dump` and read back from it
(`controller.routing.envoy_readback`) over deadline-bounded admin calls (`controller.routing.envoy_admin`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from controller.atomic_file import atomic_write, read_limited
from controller.deadline import Deadline, DeadlineExceeded
from controller.engine.routing_model import DesiredRouting
from controller.redact import redact_url
from controller.routing.envoy_admin import DEFAULT_MAX_BYTES, EnvoyAdminError, admin_get_json
from controller.routing.envoy_readback import CLUSTER_SEPARATOR, UnrepresentableRoutes, read_back
from controller.routing.envoy_render import (
    RANDOM_VALUE_HEADER,
    ROUTE_CONFIG_NAME,
    ROUTE_CONFIG_TYPE,
    cluster_name,
    discovery_response,
    rds_config_source,
    render_route_configuration,
    render_virtual_host,
    virtual_host_name,
)

__all__ = [
    "CLUSTER_SEPARATOR",
    "DESIRED_FILE_NAME",
    "RANDOM_VALUE_HEADER",
    "ROUTES_FILE_NAME",
    "ROUTE_CONFIG_NAME",
    "ROUTE_CONFIG_TYPE",
    "EnvoyFileRouter",
    "EnvoyRejectedError",
    "EnvoyRoutingError",
    "cluster_name",
    "discovery_response",
    "rds_config_source",
    "render_route_configuration",
    "render_virtual_host",
    "virtual_host_name",
]

ROUTES_FILE_NAME = "routes.json"
DESIRED_FILE_NAME = "desired-routings.json"
MAX_STATE_FILE_BYTES = 16 * 1024 * 1024


class EnvoyRoutingError(RuntimeError):
    """Envoy did not accept (or did not confirm in time) a route configuration, or its routes are unreadable."""


class EnvoyRejectedError(EnvoyRoutingError):
    """Envoy rejected the route configuration (it keeps serving the previous one)."""


def _read_capped(path: Path) -> bytes:
    return read_limited(path, MAX_STATE_FILE_BYTES)  # a regular file only: a FIFO never blocks the router


def _read_desired(path: Path) -> dict[tuple[str, str], DesiredRouting]:
    try:
        items = json.loads(_read_capped(path))
        if not isinstance(items, list):
            raise ValueError(f"expected a list, got {type(items).__name__}")
        routings = [DesiredRouting.model_validate(item) for item in items]
        render_route_configuration(routings)  # every stored routing must still render, or no write could
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, RecursionError) as exc:  # pydantic's ValidationError is a ValueError
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise EnvoyRoutingError(f"{path}: unreadable desired routings ({reason}); remove it to start afresh") from None
    return {(r.namespace, r.service): r for r in routings}


def _read_version(path: Path) -> int:
    """The version_info in the routes file (0 when absent or unreadable: the next write starts a new one)."""
    try:
        data = json.loads(_read_capped(path))
        return max(0, int(data.get("version_info", 0)))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return 0


Key = tuple[str, str]


class EnvoyFileRouter:
    """Keeps the desired routing per (namespace, service) and pushes it to Envoy via a watched RDS file.

    `apply` writes the whole RouteConfiguration (every known service) with a new, monotonically
    increasing `version_info`, then polls the admin `/config_dump` until Envoy reports that version AND
    serves the routing (read back). Only then is the routing *confirmed*. Confirmation is tracked apart
    from the desired routings: after a restart (desired routings read from disk) nothing is confirmed
    until Envoy is seen serving it, and `observed` forgets a confirmation as soon as Envoy serves
    something else (drift), so the next `apply` rewrites it.

    Every admin call is bounded by a TOTAL deadline: `min(confirm_timeout, deadline)` for `apply`,
    `min(admin_timeout, deadline)` for `observed`.
    """

    def __init__(
        self,
        routes_dir: Path,
        admin_url: str,
        confirm_timeout: float = 5.0,
        route_config_name: str = ROUTE_CONFIG_NAME,
        admin_timeout: float = 2.0,
        max_answer_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.routes_dir = Path(routes_dir)
        self.routes_file = self.routes_dir / ROUTES_FILE_NAME
        self.admin_url = admin_url.rstrip("/")
        self.confirm_timeout = confirm_timeout
        self.admin_timeout = admin_timeout
        self.max_answer_bytes = max_answer_bytes
        self.route_config_name = route_config_name
        # The desired routings behind the routes file, so a restarted controller knows every service's
        # routes (its first write must not drop other services).
        self.desired_file = self.routes_dir / DESIRED_FILE_NAME
        self._routings: dict[Key, DesiredRouting] = _read_desired(self.desired_file)
        self._confirmed: dict[Key, DesiredRouting] = {}
        # Continue after any version already on disk, so a restarted controller never reuses one.
        self._version = _read_version(self.routes_file)
        self._lock = threading.RLock()

    @property
    def version(self) -> int:
        return self._version

    def current(self, namespace: str, service: str) -> DesiredRouting | None:
        """The desired routing (what the routes file holds for the service), confirmed or not."""
        return self._routings.get((namespace, service))

    def confirmed(self, namespace: str, service: str) -> DesiredRouting | None:
        """The routing Envoy was last seen serving for the service (None: not confirmed)."""
        return self._confirmed.get((namespace, service))

    def routings(self) -> list[DesiredRouting]:
        return list(self._routings.values())

    def config_source(self) -> dict[str, Any]:
        return rds_config_source(self.routes_file, self.route_config_name)

    def initial_file(self, routings: Iterable[DesiredRouting]) -> Path:
        """Write the routes file before Envoy starts (nothing is confirmed); returns its path."""
        with self._lock:
            for routing in routings:
                self._routings[(routing.namespace, routing.service)] = routing
                self._confirmed.pop((routing.namespace, routing.service), None)
            self._write(self._next_version())
        return self.routes_file

    def _total(self, cap: float, deadline: Deadline | None, what: str) -> Deadline:
        if deadline is None:
            return Deadline(cap)
        try:
            return Deadline(deadline.timeout(cap))
        except DeadlineExceeded as exc:
            raise EnvoyRoutingError(f"{what}: no time left ({exc}); nothing done") from None

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        """Make Envoy serve `routing`; returns only once Envoy CONFIRMED it.

        True: written and confirmed. False: nothing written, because Envoy was already confirmed (or is
        now read back) serving exactly `routing`. Raises EnvoyRoutingError, with the reason, when it is
        not confirmed within min(confirm_timeout, deadline): a rejected configuration puts the file back
        to the previous routing (Envoy keeps serving that one); an unconfirmed one stays in the file as
        the latest intent, unconfirmed, so the next apply writes and waits again.
        """
        key = (routing.namespace, routing.service)
        what = f"routing {routing.namespace}/{routing.service}"
        try:
            render_route_configuration([routing])  # validate before touching anything
        except ValueError as exc:
            raise EnvoyRoutingError(f"{what}: not a valid routing ({exc}); nothing written") from None
        with self._lock:
            total = self._total(self.confirm_timeout, deadline, what)
            previous = self._routings.get(key)
            if previous == routing:
                if self._confirmed.get(key) == routing:
                    return False
                with contextlib.suppress(EnvoyRoutingError):
                    if self._served(key, routing, total)[1] == routing:
                        self._confirmed[key] = routing
                        return False
            rejected_before = self._rejected_count(total)
            if total.expired:  # writers ask before acting: no write that could not be confirmed
                raise EnvoyRoutingError(f"{what}: deadline reached before writing; nothing written")
            self._routings[key] = routing
            self._confirmed.pop(key, None)
            version = self._next_version()
            try:
                self._write(version)
                self._confirm(version, routing, rejected_before, total)
            except EnvoyRejectedError:
                self._restore(key, previous)
                raise
            except OSError as exc:
                self._restore(key, previous)
                raise EnvoyRoutingError(f"{what}: cannot write {self.routes_file}: {exc}") from exc
            self._confirmed[key] = routing
            return True

    def observed(self, namespace: str, service: str, deadline: Deadline | None = None) -> DesiredRouting | None:
        """What Envoy serves for the service right now, read back from `/config_dump` (None: no virtual
        host for it). Raises EnvoyRoutingError when the admin API is unreadable or Envoy serves routes
        Ramp cannot express. Anything but the confirmed routing clears the confirmation."""
        key = (namespace, service)
        with self._lock:
            total = self._total(self.admin_timeout, deadline, f"reading routes of {namespace}/{service}")
            desired = self._routings.get(key)
            try:
                _, served = self._served(key, desired, total)
            except EnvoyRoutingError:
                self._confirmed.pop(key, None)
                raise
            if served is not None and served == desired:
                self._confirmed[key] = served
            elif served != self._confirmed.get(key):
                self._confirmed.pop(key, None)
            return served

    def invalidate(self, namespace: str, service: str) -> None:
        """Forget the confirmation: the next apply reads back what Envoy serves and rewrites unless it matches."""
        with self._lock:
            self._confirmed.pop((namespace, service), None)

    def envoy_route_version(self, timeout: float = 2.0) -> str | None:
        """The version_info Envoy currently reports for our route configuration (None if none)."""
        return self._config_dump_version(Deadline(timeout))

    # -- internals -----------------------------------------------------------------------------
    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _write(self, version: str) -> None:
        desired = [r.model_dump(mode="json") for r in self._routings.values()]
        atomic_write(self.desired_file, (json.dumps(desired, indent=1) + "\n").encode())
        document = discovery_response(list(self._routings.values()), version, self.route_config_name)
        atomic_write(self.routes_file, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())

    def _restore(self, key: Key, previous: DesiredRouting | None) -> None:
        if previous is None:
            self._routings.pop(key, None)
        else:
            self._routings[key] = previous
        with contextlib.suppress(OSError):
            self._write(self._next_version())

    def _config_dump(self, total: Deadline) -> dict[str, Any]:
        url = f"{self.admin_url}/config_dump?resource=dynamic_route_configs"
        try:
            return admin_get_json(url, total, self.admin_timeout, self.max_answer_bytes)
        except EnvoyAdminError as exc:
            raise EnvoyRoutingError(f"cannot read Envoy's routes: {exc}") from None

    def _config_dump_version(self, total: Deadline) -> str | None:
        try:
            return read_back(self._config_dump(total), self.route_config_name, "", "")[0]
        except UnrepresentableRoutes as exc:
            raise EnvoyRoutingError(f"Envoy's config_dump is malformed: {exc}") from None

    def _served(
        self, key: Key, template: DesiredRouting | None, total: Deadline
    ) -> tuple[str | None, DesiredRouting | None]:
        """(version_info, routing Envoy serves for `key`), one admin call."""
        dump = self._config_dump(total)
        try:
            return read_back(dump, self.route_config_name, key[0], key[1], template)
        except UnrepresentableRoutes as exc:
            where = f"{key[0]}/{key[1]}"
            raise EnvoyRoutingError(f"Envoy serves routes for {where} that Ramp cannot express: {exc}") from None

    def _rejected_count(self, total: Deadline) -> int | None:
        url = f"{self.admin_url}/stats?format=json&filter=rds\\.{self.route_config_name}\\.update_rejected$"
        try:
            cap = min(self.admin_timeout, 1.0, total.remaining() / 4)  # leave time to write and confirm
            data = admin_get_json(url, total, cap, self.max_answer_bytes)
        except EnvoyAdminError:
            return None
        stats = data.get("stats")
        if not isinstance(stats, list):
            return None
        total_rejected = 0
        for stat in stats:
            value = stat.get("value") if isinstance(stat, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                total_rejected += value
        return total_rejected

    def _confirm(self, version: str, routing: DesiredRouting, rejected_before: int | None, total: Deadline) -> None:
        key = (routing.namespace, routing.service)
        last = "no answer"
        checks = 0
        while True:
            try:
                seen, served = self._served(key, routing, total)
                if seen == version and served == routing:
                    return
                if seen == version:
                    shown = served.describe() if served is not None else "nothing"
                    last = f"Envoy reports version_info {seen!r} but serves {shown}, not {routing.describe()}"
                else:
                    last = f"Envoy reports version_info {seen!r}"
            except EnvoyRoutingError as exc:
                if not total.expired or last == "no answer":  # keep what Envoy said over "no time left"
                    last = str(exc)
            checks += 1
            if rejected_before is not None and checks % 4 == 0 and not total.expired:
                rejected = self._rejected_count(total)
                if rejected is not None and rejected > rejected_before:
                    raise EnvoyRejectedError(
                        f"Envoy rejected route configuration version {version} ({self.routes_file}); see the Envoy log"
                    )
            if total.expired:
                raise EnvoyRoutingError(
                    f"Envoy at {redact_url(self.admin_url)} did not confirm route configuration version {version} "
                    f"for {routing.namespace}/{routing.service} within {total.seconds:.2f}s ({last}); "
                    f"routes file {self.routes_file}"
                )
            time.sleep(min(0.02, total.remaining()))
