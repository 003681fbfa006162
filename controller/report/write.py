"""Write a report: inputs -> charts -> one HTML file, written atomically (never a half-written report)."""

from __future__ import annotations

import time
from pathlib import Path

from controller.atomic_file import atomic_write
from controller.report.build import build_report
from controller.report.html import render_html
from controller.report.model import ReportInputs


def write_report(inputs: ReportInputs, path: Path, now: float | None = None) -> Path:
    """The report's absolute path; OSError when it cannot be written."""
    page = render_html(build_report(inputs), generated_at=time.time() if now is None else now)
    target = path.expanduser().resolve()
    atomic_write(target, page.encode("utf-8"))
    target.chmod(0o644)  # a report is for sharing (atomic_write's temporary file is private)
    return target
