"""`ramp loadtest`: a small load tester that a webhook starts, so a rollout's header step gets traffic in a cluster
with no human testers (in the spirit of Flagger's loadtester, but bounded in every dimension).

- `request.py`: a Ramp hook payload (hostile JSON) -> a checked `LoadRequest`, within the server's `Caps`;
- `run.py`: one run: paced requests carrying the header, bounded in rate, duration, concurrency and total count,
  each request under a total deadline; it ends by itself;
- `tester.py`: the runs of one server: idempotency per rollout + step, capacity, stop, a bounded history;
- `server.py`: `POST /start`, `POST /stop`, `GET /runs`, `/healthz`, `/readyz`, `/metrics` on the hardened
  endpoint server, with an optional HMAC signature check of every POST.
"""
