"""Where a local-mode controller (`ramp run`, `ramp demo`) runs: written into its state directory so that
CLI commands given `--state-dir` find the Envoy admin and routes without more flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.atomic_file import atomic_write, read_limited

LOCAL_INFO_FILE = "local-controller.json"
MAX_INFO_BYTES = 64 * 1024


class LocalInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    envoy_admin: str
    envoy_routes_dir: str
    specs: str | None = None
    pid: int | None = None


def write_local_info(state_dir: Path, envoy_admin: str, envoy_routes_dir: Path, specs: Path | None = None) -> None:
    info = LocalInfo(
        envoy_admin=envoy_admin,
        envoy_routes_dir=str(Path(envoy_routes_dir).resolve()),
        specs=None if specs is None else str(Path(specs).resolve()),
        pid=os.getpid(),
    )
    atomic_write(state_dir / LOCAL_INFO_FILE, info.model_dump_json(indent=1).encode())


def read_local_info(state_dir: Path) -> LocalInfo | None:
    """The info file, or None when absent; a damaged file raises ValueError naming it."""
    path = state_dir / LOCAL_INFO_FILE
    try:
        raw = read_limited(path, MAX_INFO_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return LocalInfo.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"{path}: not a valid local controller info file ({type(exc).__name__})") from None
