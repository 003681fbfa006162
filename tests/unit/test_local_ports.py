"""Ports for the local stack: free, distinct, and out of the kernel's ephemeral range (so that no outgoing
connection, e.g. a parallel test session's HTTP client, can take one between its choice and its bind)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from controller.local.ports import LOWEST, candidate_range, ephemeral_low, free_port, free_ports


def range_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    return path


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = ephemeral_low()
    if low is None or candidate_range() is None:
        pytest.skip("this kernel's ephemeral range leaves no room below it")
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(LOWEST <= p < low for p in ports), (ports, low)
    for port in ports:  # free now: each can be bound (and listened on) by whoever starts next
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()
    assert LOWEST <= free_port() < low


def test_a_port_in_use_is_never_chosen(tmp_path: Path) -> None:
    path = range_file(tmp_path, "40100\t60999\n")  # candidates: 30100..40099
    held = []
    try:
        for port in range(30100, 40100, 7):  # a seventh of the candidates taken by listeners
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sock.listen()
            held.append(sock)
        taken = {s.getsockname()[1] for s in held}
        ports = free_ports(20, path=path)
        assert not taken & set(ports) and len(set(ports)) == 20
        assert all(30100 <= p < 40100 for p in ports)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("text", ["", "garbage", "0 0", "70000 80000", "1024 2000", "10050 60999"])
def test_an_unreadable_or_cramped_range_leaves_the_choice_to_the_os(tmp_path: Path, text: str) -> None:
    path = range_file(tmp_path, text)
    assert candidate_range(path) is None
    ports = free_ports(3, path=path)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


def test_a_missing_range_file_leaves_the_choice_to_the_os(tmp_path: Path) -> None:
    assert ephemeral_low(tmp_path / "absent") is None
    assert len(set(free_ports(2, path=tmp_path / "absent"))) == 2


def test_the_candidates_stop_at_the_ephemeral_range_and_never_go_under_the_lowest(tmp_path: Path) -> None:
    assert candidate_range(range_file(tmp_path, "32768 60999")) == range(22768, 32768)
    assert candidate_range(range_file(tmp_path, "15000 60999")) == range(LOWEST, 15000)
