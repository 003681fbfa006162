"""A tiny versioned HTTP service for the local demo (stdlib only).

Environment:
  VERSION      version label served back to clients (required)
  PORT         listen port (default 8080)
  HOST         listen address (default 127.0.0.1; the Helm chart sets 0.0.0.0 in pods)
  ERROR_RATE   fraction 0..1 of /api/* requests answered with 500 (default 0)
  LATENCY_MS   extra delay added to /api/* requests, in milliseconds (default 0)
  SEED         seed of the error RNG (default: unseeded)

Endpoints:
  GET  /api/version  -> 200 {"version": V} (header x-served-by: V) or an injected 500
  GET  /health       -> 200 {"status": "ok", "version": V}
  POST /admin/fault  -> body {"error_rate": x, "latency_ms": y}; changes the knobs at runtime
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Knobs:
    """Runtime-adjustable fault injection, shared by all handler threads."""

    version: str
    error_rate: float = 0.0
    latency_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, error_rate: float | None, latency_ms: float | None) -> None:
        with self.lock:
            if error_rate is not None:
                self.error_rate = _check_rate(error_rate)
            if latency_ms is not None:
                self.latency_ms = _check_latency(latency_ms)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"version": self.version, "error_rate": self.error_rate, "latency_ms": self.latency_ms}

    def draw(self) -> tuple[bool, float]:
        """(fail this request?, delay in seconds)."""
        with self.lock:
            fail = self.error_rate > 0 and self.rng.random() < self.error_rate
            return fail, self.latency_ms / 1000.0


def _check_rate(value: object) -> float:
    rate = float(value)  # type: ignore[arg-type]
    if not 0.0 <= rate <= 1.0:
        raise ValueError("error_rate must be within 0..1")
    return rate


def _check_latency(value: object) -> float:
    latency = float(value)  # type: ignore[arg-type]
    if not 0.0 <= latency <= 600_000:
        raise ValueError("latency_ms must be within 0..600000")
    return latency


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ramp-sample-app"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; avoid 40 ms stalls
    knobs: Knobs  # set on the subclass built by make_server

    def log_message(self, format: str, *args: Any) -> None:  # quiet access log
        return

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-served-by", self.knobs.version)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        version = self.knobs.version
        if path == "/health":
            self._send_json(200, {"status": "ok", "version": version})
        elif path.startswith("/api/"):
            fail, delay = self.knobs.draw()
            if delay > 0:
                time.sleep(delay)
            if fail:
                self._send_json(500, {"error": "injected fault", "version": version})
            elif path == "/api/version":
                self._send_json(200, {"version": version})
            else:
                self._send_json(404, {"error": "not found", "version": version})
        else:
            self._send_json(404, {"error": "not found", "version": version})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path != "/admin/fault":
            self._send_json(404, {"error": "not found", "version": self.knobs.version})
            return
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            self.knobs.update(data.get("error_rate"), data.get("latency_ms"))
        except (ValueError, TypeError) as exc:
            self._send_json(400, {"error": str(exc), "version": self.knobs.version})
            return
        self._send_json(200, self.knobs.snapshot())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(knobs: Knobs, port: int, host: str = "127.0.0.1") -> Server:
    handler = type("BoundHandler", (Handler,), {"knobs": knobs})
    return Server((host, port), handler)


def knobs_from_env(env: dict[str, str]) -> Knobs:
    version = env.get("VERSION", "").strip()
    if not version:
        raise SystemExit("sample_app: VERSION is required")
    seed = env.get("SEED")
    return Knobs(
        version=version,
        error_rate=_check_rate(env.get("ERROR_RATE", "0") or 0),
        latency_ms=_check_latency(env.get("LATENCY_MS", "0") or 0),
        rng=random.Random(int(seed)) if seed else random.Random(),
    )


def main() -> None:
    env = dict(os.environ)
    knobs = knobs_from_env(env)
    port = int(env.get("PORT", "8080"))
    host = env.get("HOST", "127.0.0.1")
    server = make_server(knobs, port, host)
    print(f"sample_app {knobs.version} listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
