"""A minimal in-memory Kubernetes API for the scale benchmark (its own process).

kmock's emulator matches every request against views over all stored objects (O(N) per request:
~0.4 ms per stored object), which makes 1,000 rollouts unmeasurable. This server implements only
what the controller uses, with apiserver semantics: GET / POST (201, 409 if it exists) / PUT
(resourceVersion check, 409 when stale) on namespaced objects, LIST of Deployments, POST of Events.
Run: python -m bench.fast_apiserver PORT  (prints "ready")
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_objects: dict[tuple[str, str, str], dict[str, Any]] = {}
_versions = itertools.count(1)


def _status(code: int, reason: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": reason,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real apiserver: the client reuses its connections
    disable_nagle_algorithm = True  # headers and body are two writes; Nagle would hold the body for 40 ms

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _parts(self) -> tuple[str, str, str | None]:
        path = self.path.split("?", 1)[0].strip("/").split("/")
        ns_at = path.index("namespaces")
        collection = "/".join(path[:ns_at]) + "/" + path[ns_at + 2]
        return collection, path[ns_at + 1], path[ns_at + 3] if len(path) > ns_at + 3 else None

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length", "0"))
        body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
        return body

    def do_GET(self) -> None:
        collection, namespace, name = self._parts()
        with _lock:
            if name is None:
                items = [o for (c, ns, _), o in _objects.items() if c == collection and ns == namespace]
                self._reply(
                    200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                )
                return
            obj = _objects.get((collection, namespace, name))
        self._reply(200, obj) if obj is not None else self._reply(404, _status(404, "NotFound"))

    def do_POST(self) -> None:
        collection, namespace, _ = self._parts()
        body = self._body()
        meta = body.setdefault("metadata", {})
        key = (collection, namespace, meta.get("name") or f"generated-{next(_versions)}")
        with _lock:
            if key in _objects:
                self._reply(409, _status(409, "AlreadyExists"))
                return
            meta["resourceVersion"] = str(next(_versions))
            meta["namespace"] = namespace
            _objects[key] = body
        self._reply(201, body)

    def do_PUT(self) -> None:
        collection, namespace, name = self._parts()
        body = self._body()
        key = (collection, namespace, name or "")
        with _lock:
            current = _objects.get(key)
            if current is None:
                self._reply(404, _status(404, "NotFound"))
                return
            if body.get("metadata", {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
                self._reply(409, _status(409, "Conflict"))
                return
            body["metadata"]["resourceVersion"] = str(next(_versions))
            _objects[key] = body
        self._reply(200, body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main(argv: list[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[0])), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
