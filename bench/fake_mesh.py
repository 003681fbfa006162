"""A stand-in for a mesh of N services: Istio-named counters and histograms on /metrics.

Each (service, version) serves `rps` requests per second with no errors and ~20 ms latency, as
cumulative counters derived from wall time, so Prometheus' increase() sees steady traffic. The
exposition text is formatted directly: 26,000 samples in milliseconds, within a 1 s scrape.
Run: python -m bench.fake_mesh PORT SERVICES NAMESPACE  (prints "ready")
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = ("1", "2", "5", "10", "25", "50", "100", "250", "500", "1000", "+Inf")
RPS = 10.0


def exposition(services: int, namespace: str, started: float) -> bytes:
    count = int((time.time() - started) * RPS)
    lines = ["# TYPE istio_requests_total counter", "# TYPE istio_request_duration_milliseconds histogram"]
    for i in range(services):
        for version in ("v1", "v2"):
            labels = (
                f'reporter="destination",destination_workload_namespace="{namespace}",'
                f'destination_service_name="svc{i}",destination_version="{version}"'
            )
            lines.append(f'istio_requests_total{{{labels},response_code="200"}} {count}')
            for le in BUCKETS:
                value = count if le not in ("1", "2", "5", "10") else 0
                lines.append(f'istio_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {value}')
            lines.append(f"istio_request_duration_milliseconds_count{{{labels}}} {count}")
            lines.append(f"istio_request_duration_milliseconds_sum{{{labels}}} {20 * count}")
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str]) -> None:
    port, services, namespace = int(argv[0]), int(argv[1]), argv[2]
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(services, namespace, started)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
