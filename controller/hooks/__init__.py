"""Webhooks at the points of a rollout (spec `hooks:`; model in controller.spec_hooks).

- `results`: what the engine sees of a hook call (pure types; `decide` takes them as inputs, like gate reports);
- `payload`: the documented JSON body every hook receives;
- `client`: one call: POST, total deadline, retries with backoff, HMAC signature, bounded and untrusted answer;
- `evaluation`: the runner's side: which hooks a tick needs, called concurrently within the tick's deadline;
- `post_rollout`: an observer that hands post-rollout payloads to a bounded background sender.

Nothing here is imported by this module, so the engine can import `results` without pulling in the client.
"""
