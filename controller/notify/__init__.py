"""Notifications about rollouts: Slack, Microsoft Teams and a generic JSON webhook.

- `message`: what a transition says in words (shared by every format);
- one module per format (`slack`, `teams`, `webhook`) and the table that names them (`registry`): a new notifier
  is one module and one line there (plus its name in `spec_notify.Notification.type`);
- `destination`: one configured notification, its URL and signing secret read from files (rotation-safe);
- `delivery`: the bounded queue and its background workers (total deadlines, retries, rate limits);
- `observer`: the runner observer that turns each tick's transitions into queued notifications, and the
  controller's global `--notifications FILE`.
"""
