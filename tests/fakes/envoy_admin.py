"""A fault-injecting fake Envoy admin API on 127.0.0.1 (reusable test fixture).

    with FakeEnvoyAdmin(routes_file=router.routes_file) as admin:     # behaves like a healthy Envoy
        admin.mode = "stale"                                           # never confirms a new version
        router = EnvoyFileRouter(routes_dir, admin.url)

Modes (settable at any time, per request):
- `confirm`: `/config_dump` reports the routes file's version_info and route configuration, like an
  Envoy that watches it (or `config_dump` when set explicitly). `chunked`: the same, sent with
  `Transfer-Encoding: chunked` in small chunks.
- `stale`: always reports `stale_version` with the route configuration it had when the mode was set:
  a wedged Envoy that never confirms anything new.
- `drip`: a 200 answer whose headers and body come one byte every `drip_interval` seconds, forever.
- `hang`: reads the request, never answers.
- `garbage`: 200 with bytes that are not JSON. `wrong_json`: 200 with a JSON list.
- `huge`: 200 announcing 1 GiB, streamed as fast as the client reads.
- `error`: HTTP 500. `not_http`: bytes that are no HTTP answer, then close.
`/clusters?format=json` answers `clusters` (a dict) in modes `confirm` and `stale`; `/stats` answers
`rejected` as the RDS update_rejected counter, plus 1 once the routes file changed after the mode was
set when `reject_file_changes` is set (an Envoy rejecting every new configuration). Every handler
stops when the server stops.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

MODES = ("confirm", "chunked", "stale", "drip", "hang", "garbage", "wrong_json", "huge", "error", "not_http")
_MAX_REQUEST_BYTES = 64 * 1024


def _response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _chunked(response: bytes) -> bytes:
    """The same answer with its body re-sent as 7-byte chunks (Content-Length replaced)."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length")]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7))
    return b"\r\n".join([*lines, b"Transfer-Encoding: chunked"]) + b"\r\n\r\n" + chunks + b"0\r\n\r\n"


class FakeEnvoyAdmin:
    def __init__(
        self,
        routes_file: Path | None = None,
        mode: str = "confirm",
        stale_version: str = "0",
        drip_interval: float = 0.05,
    ) -> None:
        self.routes_file = routes_file
        self.stale_version = stale_version
        self.drip_interval = drip_interval
        self.config_dump: dict[str, Any] | None = None  # overrides the routes file in `confirm` mode
        self.clusters: dict[str, Any] = {"cluster_statuses": []}
        self.rejected = 0
        self.reject_file_changes = False
        self._file_version_at_mode: str | None = None
        self.requests: list[str] = []  # request targets, at most 10,000 kept
        self._stopped = threading.Event()
        self._stale_dump: dict[str, Any] = {"configs": []}
        self._mode = "confirm"
        self.mode = mode
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    # -- behaviour ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if mode == "stale":
            self._stale_dump = self._dump_from_file(self.stale_version)
        self._file_version_at_mode = self._file_version()
        self._mode = mode

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _file_version(self) -> str | None:
        try:
            return str(json.loads(self.routes_file.read_text(encoding="utf-8"))["version_info"])  # type: ignore[union-attr]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _dump_from_file(self, version: str | None = None) -> dict[str, Any]:
        if self.config_dump is not None:
            return self.config_dump
        if self.routes_file is None:
            return {"configs": []}
        try:
            document = json.loads(self.routes_file.read_text(encoding="utf-8"))
            resource = dict(document["resources"][0])
            file_version = str(document["version_info"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return {"configs": []}
        resource.pop("@type", None)
        config = {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", **resource}
        return {"configs": [{"version_info": version or file_version, "route_config": config}]}

    # -- serving -----------------------------------------------------------------------------
    def _read_request(self, sock: socket.socket) -> str:
        sock.settimeout(2.0)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < _MAX_REQUEST_BYTES:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        target = parts[1] if len(parts) > 1 else ""
        if len(self.requests) < 10_000:
            self.requests.append(target)
        return target

    def _handle(self, sock: socket.socket) -> None:
        try:
            target = self._read_request(sock)
            mode = self._mode
            if mode == "hang":
                self._stopped.wait()
            elif mode == "drip":
                self._drip(sock, _response(200, json.dumps(self._dump_from_file()).encode()))
            elif mode == "huge":
                self._huge(sock)
            elif mode == "garbage":
                sock.sendall(_response(200, b"\x00\xffnot json {{{", "text/plain"))
            elif mode == "wrong_json":
                sock.sendall(_response(200, b"[1, 2, 3]"))
            elif mode == "error":
                sock.sendall(_response(500, b"upstream sadness"))
            elif mode == "not_http":
                sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            elif mode == "chunked":
                sock.sendall(_chunked(self._answer(target, mode)))
            else:
                sock.sendall(self._answer(target, mode))
        except OSError:
            return  # the client gave up: expected for slow modes

    def _answer(self, target: str, mode: str) -> bytes:
        path = target.split("?", 1)[0]
        if path == "/config_dump":
            dump = self._stale_dump if mode == "stale" else self._dump_from_file()
            return _response(200, json.dumps(dump).encode())
        if path == "/clusters":
            return _response(200, json.dumps(self.clusters).encode())
        if path == "/stats":
            changed = self.reject_file_changes and self._file_version() != self._file_version_at_mode
            stat = {"name": "http.rds.ramp-routes.update_rejected", "value": self.rejected + int(changed)}
            return _response(200, json.dumps({"stats": [stat]}).encode())
        if path == "/ready":
            return _response(200, b"LIVE\n", "text/plain")
        return _response(404, b"no such admin endpoint")

    def _drip(self, sock: socket.socket, payload: bytes) -> None:
        for index in range(len(payload)):
            if self._stopped.wait(self.drip_interval):
                return
            sock.sendall(payload[index : index + 1])
        while not self._stopped.wait(self.drip_interval):
            sock.sendall(b" ")  # then trailing whitespace, forever

    def _huge(self, sock: socket.socket) -> None:
        size = 1 << 30
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        block = b"[" * 65536  # valid-looking JSON prefix, never complete
        sent = 0
        while sent < size and not self._stopped.is_set():
            sock.sendall(block)
            sent += len(block)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeEnvoyAdmin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> FakeEnvoyAdmin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
