"""Which shard a rollout belongs to, and the Lease that guards each shard: pure, stable functions.

`ramp controller --shards S` splits the rollouts over S shards; each shard is guarded by its own
coordination.k8s.io Lease (see controller/k8s/shards.py), so a replica acts on a rollout only while it
holds that rollout's shard Lease. Every replica must map a rollout to the same shard, in every process
and Python version, so the shard is sha256 of "namespace/service" read as a big-endian integer, mod S:
never `hash()` (salted per process for str). With S == 1 every rollout is shard 0 and the Lease keeps
its base name, exactly as before sharding existed.
"""

from __future__ import annotations

import hashlib
import re

MAX_SHARDS = 64
MAX_LEASE_NAME = 253  # a Lease's metadata.name is a DNS-1123 subdomain
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def validate_shards(shards: object) -> None:
    """Raise ValueError unless `shards` is an int in 1..MAX_SHARDS (bool is not a count)."""
    if isinstance(shards, bool) or not isinstance(shards, int):
        raise ValueError(f"shards must be an integer, got {type(shards).__name__}")
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")


def shard_of(namespace: str, service: str, shards: int) -> int:
    """The shard (0..shards-1) of the rollout of `service` in `namespace`; the same in every process."""
    validate_shards(shards)
    digest = hashlib.sha256(f"{namespace}/{service}".encode()).digest()
    return int.from_bytes(digest, "big") % shards


def is_dns_subdomain(name: str) -> bool:
    """True for a valid Kubernetes object name of the DNS-1123 subdomain kind (as a Lease's name)."""
    return (
        0 < len(name) <= MAX_LEASE_NAME
        and _DNS_SUBDOMAIN.fullmatch(name) is not None
        and all(len(label) <= 63 for label in name.split("."))
    )


def lease_name_for(base: str, shard: int, shards: int) -> str:
    """The Lease guarding `shard` of `shards`: `base` itself when shards == 1, else `<base>-shard-<i>-of-<S>`.

    Raises ValueError for a shard out of range or a name that is not a valid Lease name (DNS-1123 subdomain).
    The shard count is in the name so replicas started with different --shards never contend for one Lease
    while splitting the rollouts differently. That also means two replicas with different --shards hold
    different Leases: changing --shards needs the old replicas stopped before the new ones start.
    """
    validate_shards(shards)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ValueError(f"shard must be an integer in 0..{shards - 1}, got {shard!r}")
    name = base if shards == 1 else f"{base}-shard-{shard}-of-{shards}"
    if not is_dns_subdomain(name):
        raise ValueError(
            f"lease name {name[:80]!r} is not a valid Lease name (DNS-1123 subdomain: lowercase letters, digits, "
            f"'-' and '.', at most {MAX_LEASE_NAME} characters)"
        )
    return name


def shard_lease_names(base: str, shards: int) -> list[str]:
    """The Lease names of all `shards` shards, in shard order."""
    return [lease_name_for(base, shard, shards) for shard in range(shards)]
