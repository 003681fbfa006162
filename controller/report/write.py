"""Write a report: inputs -> charts -> one HTML file, written atomically (never a half-written report).

A report never replaces a file that is not a Ramp report (a state file, a timeline, a spec, anything else given
by mistake as the output): that is refused with the reason, and nothing is written."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from controller.atomic_file import atomic_write
from controller.report.build import build_report
from controller.report.html import REPORT_MARK, render_html
from controller.report.model import ReportInputs

SNIFF_BYTES = 4096


class ReportPathError(ValueError):
    """The report cannot go to this path (the message says why); nothing was written."""


def overwrite_problem(path: Path) -> str | None:
    """Why writing a report at `path` would destroy something else, or None (absent, or an earlier report)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there to lose (writing may still fail: said then)
        return None
    except OSError as exc:
        return f"cannot be checked: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "exists and is not a regular file: never replaced"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            head = os.read(descriptor, SNIFF_BYTES)
        finally:
            os.close(descriptor)
    except OSError as exc:
        return f"cannot be read to check it: {exc.strerror or exc}"
    if REPORT_MARK.encode() not in head:
        return "exists and is not a Ramp report: choose another path (it is never overwritten)"
    return None


def write_report(inputs: ReportInputs, path: Path, now: float | None = None) -> Path:
    """The report's absolute path; ReportPathError when the path holds something else, OSError when it cannot
    be written."""
    target = path.expanduser().resolve()
    problem = overwrite_problem(target)
    if problem is not None:
        raise ReportPathError(f"{path}: {problem}")
    page = render_html(build_report(inputs), generated_at=time.time() if now is None else now)
    atomic_write(target, page.encode("utf-8"))
    target.chmod(0o644)  # a report is for sharing (atomic_write's temporary file is private)
    return target
