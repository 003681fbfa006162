"""Loopback port helpers.

A port is chosen now and bound later by another process (an app, Envoy, Prometheus), so something else may take
it in between. The kernel hands out ports of its ephemeral range to every outgoing connection, so a port chosen
there (by binding port 0) can be taken by any `connect()` on the machine, e.g. a parallel test session's HTTP
client. These helpers therefore pick, at random, ports BELOW the ephemeral range (/proc/sys/net/ipv4/
ip_local_port_range), which outgoing connections never use; when that range cannot be read or leaves no room,
the OS picks as before.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
BELOW_EPHEMERAL = 10_000  # how many ports under the ephemeral range are candidates
LOWEST = 10_000  # never below this (well-known and commonly configured ports)
ATTEMPTS = 200


def ephemeral_low(path: Path = PORT_RANGE_FILE) -> int | None:
    """The first port of the kernel's ephemeral range, or None when it cannot be read."""
    try:
        first = path.read_text(encoding="ascii").split()[0]
        low = int(first)
    except (OSError, ValueError, IndexError):
        return None
    return low if 1024 < low <= 65535 else None


def candidate_range(path: Path = PORT_RANGE_FILE) -> range | None:
    """Where to pick ports: under the ephemeral range, never below LOWEST; None when there is no such room."""
    low = ephemeral_low(path)
    if low is None:
        return None
    start = max(LOWEST, low - BELOW_EPHEMERAL)
    return range(start, low) if low - start >= 100 else None


def _try_bind(host: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_ports(count: int, host: str = "127.0.0.1", *, path: Path = PORT_RANGE_FILE) -> list[int]:
    """`count` distinct ports free on `host` right now (all held open together while choosing, so they differ)."""
    socks: list[socket.socket] = []
    try:
        where = candidate_range(path)
        rng = random.SystemRandom()
        attempts = 0
        while where is not None and len(socks) < count and attempts < ATTEMPTS:
            attempts += 1
            sock = _try_bind(host, rng.choice(where))
            if sock is not None:
                socks.append(sock)
        while len(socks) < count:  # no room under the ephemeral range (or all taken): the OS picks
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (see the module docstring for where it is picked)."""
    return free_ports(1, host)[0]
