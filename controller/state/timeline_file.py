"""Local mode's rollout timelines: one JSON line per tick in `<state-dir>/<rollout>.timeline.jsonl`, read by
`ramp report --state-dir`.

An observer of the runner (`TimelineFile`): a `rollout` line (the spec's versions, steps, gate thresholds) when a
rollout is first seen or its spec changes, then a `tick` line per tick (weights, header route, every gate's value
for the new and the stable version, e-values, the reason). Appending never breaks a tick (an error is logged).
The file is bounded: past MAX_TIMELINE_BYTES it is rewritten atomically with its last rollout line and the newer
half of its ticks. A line torn by a crash, or anything else unreadable, is skipped by the reader and counted.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from controller.atomic_file import atomic_write
from controller.engine.ports import TickEvent
from controller.report.model import TickSample
from controller.report.samples import RolloutHeader, rollout_header, tick_sample

log = structlog.get_logger(__name__)

TIMELINE_SUFFIX = ".timeline.jsonl"
MAX_TIMELINE_BYTES = 8 * 1024 * 1024  # about 20,000 ticks of a rollout with a few gates
MAX_LINE_BYTES = 256 * 1024


def timeline_path(directory: Path, rollout: str) -> Path:
    return directory / f"{rollout}{TIMELINE_SUFFIX}"


@dataclass
class TimelineFile:
    """Runner observer appending each tick of each rollout to its timeline file."""

    directory: Path
    max_bytes: int = MAX_TIMELINE_BYTES
    _digests: dict[str, str] = field(default_factory=dict)

    def __call__(self, event: TickEvent) -> None:
        rollout = event.rollout
        path = timeline_path(self.directory, rollout.name)
        lines: list[str] = []
        if self._digests.get(rollout.name) != rollout.digest or not path.exists():
            header = rollout_header(rollout)
            lines.append(json.dumps({"kind": "rollout", **header.model_dump(mode="json")}, allow_nan=False))
        sample = tick_sample(event)
        lines.append(json.dumps({"kind": "tick", **sample.model_dump(mode="json")}, allow_nan=False))
        try:
            self._append(path, "".join(line + "\n" for line in lines))
        except OSError as exc:
            log.warning("timeline not written", rollout=rollout.name, path=str(path), error=str(exc))
            return
        self._digests[rollout.name] = rollout.digest

    def _append(self, path: Path, text: str) -> None:
        data = text.encode()
        # Non-blocking and checked: a FIFO, device or symlink put in place of a timeline never blocks the tick.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{path}: not a regular file")
            if info.st_size + len(data) > self.max_bytes:
                _compact(descriptor, path, data, self.max_bytes)
                return
            os.write(descriptor, data)
        finally:
            os.close(descriptor)


def _compact(descriptor: int, path: Path, tail: bytes, max_bytes: int) -> None:
    """Keep the last rollout line and the newer half of the ticks (within half the limit), then `tail`."""
    size = os.fstat(descriptor).st_size
    old = os.pread(descriptor, max_bytes, max(0, size - max_bytes)).splitlines()
    header = next((line for line in reversed(old) if line.startswith(b'{"kind": "rollout"')), None)
    kept: list[bytes] = []
    budget = max_bytes // 2
    for line in reversed(old):
        if not line.startswith(b'{"kind": "tick"'):
            continue
        budget -= len(line) + 1
        if budget < 0:
            break
        kept.append(line)
    kept.reverse()
    body = b"".join(line + b"\n" for line in ([header] if header else []) + kept)
    atomic_write(path, body + tail)


@dataclass
class Timeline:
    header: RolloutHeader | None
    samples: list[TickSample]
    skipped: int  # unreadable lines
    truncated: bool  # the file was larger than the reader's limit: only its end was read


def read_timeline(path: Path, max_bytes: int = 2 * MAX_TIMELINE_BYTES) -> Timeline:
    """The timeline's last rollout header and its ticks in time order; unreadable lines are counted, not fatal.
    A missing file raises FileNotFoundError; other read errors OSError."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in its place never blocks the reader
    try:
        size = os.fstat(descriptor).st_size
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{path.name}: not a regular file")
        truncated = size > max_bytes
        raw = os.pread(descriptor, max_bytes, max(0, size - max_bytes))
    finally:
        os.close(descriptor)
    lines = raw.splitlines()
    if truncated and lines:
        lines = lines[1:]  # the first line was cut by the seek
    header: RolloutHeader | None = None
    samples: list[TickSample] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError("line too long")
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            kind = record.pop("kind", None)
            if kind == "rollout":
                header = RolloutHeader.model_validate(record)
            elif kind == "tick":
                samples.append(TickSample.model_validate(record))
            else:
                raise ValueError("unknown kind")
        except (ValueError, ValidationError, RecursionError):
            skipped += 1
    samples.sort(key=lambda s: s.at)
    return Timeline(header=header, samples=samples, skipped=skipped, truncated=truncated)
