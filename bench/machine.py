"""What the numbers were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith(prefix)), None)
    except OSError:
        return None


def _cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


def _memory_gib() -> str:
    total = _proc_field("/proc/meminfo", "MemTotal")
    return f"{int(total.split()[0]) / 1024 / 1024:.1f} GiB" if total else "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "not found"


def describe() -> dict[str, str]:
    from controller.local.envoy_process import envoy_binary
    from controller.local.prometheus_process import prometheus_binary

    return {
        "date": datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()} x {os.cpu_count()}",
        "memory": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "envoy": _version([envoy_binary(), "--version"]).split("version:")[-1].strip(),
        "prometheus": _version([prometheus_binary(), "--version"]),
    }
