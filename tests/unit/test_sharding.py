"""controller.sharding: a rollout's shard is stable across processes, spread evenly, and named validly."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from controller.sharding import MAX_SHARDS, is_dns_subdomain, lease_name_for, shard_lease_names, shard_of


@pytest.mark.parametrize(
    ("namespace", "service", "expected"),
    [
        # sha256("namespace/service") as a big-endian integer, mod 2, 3, 7, 64: fixed values, so a change of
        # hash, byte order or separator (which would move rollouts between live replicas) fails here.
        ("default", "checkout", [0, 0, 5, 22]),
        ("default", "payments", [1, 2, 2, 29]),
        ("shop", "cart", [1, 2, 4, 29]),
        ("ramp-system", "api", [1, 1, 0, 35]),
        ("", "", [1, 2, 4, 49]),
    ],
)
def test_shard_of_is_fixed(namespace: str, service: str, expected: list[int]) -> None:
    assert [shard_of(namespace, service, shards) for shards in (2, 3, 7, 64)] == expected


def test_one_shard_holds_everything() -> None:
    assert {shard_of(f"ns-{i}", f"svc-{i}", 1) for i in range(200)} == {0}


def test_shard_of_is_the_same_in_another_process() -> None:
    """str hash() is salted per process; shard_of must not be: a fresh interpreter computes the same shards."""
    names = [(f"team-{i % 5}", f"svc-{i}") for i in range(50)]
    here = [shard_of(ns, svc, 7) for ns, svc in names]
    code = f"from controller.sharding import shard_of;print([shard_of(ns, svc, 7) for ns, svc in {names!r}])"
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30, env=env, cwd=root
    )
    assert out.stdout.strip() == str(here)


def test_namespace_and_service_are_not_confused() -> None:
    """'a/b' + 'c' and 'a' + 'b/c' hash the same string; the names that matter (DNS labels) cannot hold '/'."""
    assert shard_of("default", "checkout", 64) != shard_of("checkout", "default", 64)


def test_spread_over_three_shards_is_within_binomial_bounds() -> None:
    """3,000 fixed names over 3 shards: each shard's count is Binomial(n=3000, p=1/3) for a uniform hash.

    Mean n*p = 1000, standard deviation sqrt(n*p*(1-p)) = sqrt(666.7) = 25.8. A bound of 5 standard deviations
    (|count - 1000| <= 129) fails a uniform hash with probability < 6e-7 per shard; the names are fixed, so the
    test is deterministic, and a hash that favours a shard by more than ~13% fails it.
    """
    n, shards = 3000, 3
    p = 1 / shards
    bound = 5 * math.sqrt(n * p * (1 - p))
    counts = Counter(shard_of(f"team-{i % 7}", f"svc-{i}", shards) for i in range(n))
    assert set(counts) == {0, 1, 2}
    for shard in range(shards):
        assert abs(counts[shard] - n * p) <= bound, (shard, counts)


def test_spread_over_many_shards_leaves_none_empty() -> None:
    counts = Counter(shard_of("default", f"svc-{i}", MAX_SHARDS) for i in range(6400))
    assert set(counts) == set(range(MAX_SHARDS))
    assert min(counts.values()) >= 100 - 5 * math.sqrt(6400 / 64 * (63 / 64))


@pytest.mark.parametrize("shards", [0, -1, MAX_SHARDS + 1, 1.0, True, "3"])
def test_invalid_shard_counts_are_refused(shards: object) -> None:
    with pytest.raises(ValueError, match="shards"):
        shard_of("default", "checkout", shards)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shards"):
        lease_name_for("ramp-controller", 0, shards)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shard", "shards"), [(-1, 3), (3, 3), (1, 1), (True, 3)])
def test_shard_out_of_range_is_refused(shard: int, shards: int) -> None:
    with pytest.raises(ValueError, match="shard must be"):
        lease_name_for("ramp-controller", shard, shards)


def test_one_shard_keeps_the_base_lease_name() -> None:
    assert lease_name_for("ramp-controller", 0, 1) == "ramp-controller"
    assert shard_lease_names("ramp-controller", 1) == ["ramp-controller"]


def test_shard_lease_names_are_distinct_valid_names() -> None:
    for shards in (2, 3, MAX_SHARDS):
        names = shard_lease_names("ramp-controller", shards)
        assert len(set(names)) == shards
        assert all(is_dns_subdomain(name) for name in names)
    assert lease_name_for("ramp-controller", 2, 3) == "ramp-controller-shard-2-of-3"


@pytest.mark.parametrize("base", ["Ramp", "ramp_controller", "-ramp", "ramp.", "x" * 240, ""])
def test_invalid_lease_names_are_refused(base: str) -> None:
    with pytest.raises(ValueError, match="not a valid Lease name"):
        lease_name_for(base, 1, 3)


@pytest.mark.parametrize(
    ("name", "valid"),
    [("a", True), ("ramp.example-1", True), ("a" * 63, True), ("a" * 64, False), ("a..b", False), ("A", False)],
)
def test_dns_subdomain_rule(name: str, valid: bool) -> None:
    assert is_dns_subdomain(name) is valid


@pytest.mark.parametrize("value", ["0", "65", "three", "-1"])
def test_the_cli_refuses_a_bad_shard_count_naming_the_option(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["controller", "--specs", "/nonexistent", "--shards", value])
    assert exited.value.code == 2
    assert "--shards must be" in capsys.readouterr().err


def test_controller_options_refuse_a_bad_shard_count() -> None:
    from controller.cluster_controller import ControllerOptions

    with pytest.raises(ValueError, match="shards must be between 1 and 64"):
        ControllerOptions(specs=Path("specs"), prometheus="http://127.0.0.1:1", shards=65)
