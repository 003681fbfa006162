"""One owner per service: two spec files for the same service, host or rollout name are both refused.

Two specs for one service would both write its VirtualService and DestinationRule and fight over the
routes; two specs with one rollout name would share one state. Choosing one of them (say the first in
sorted order) would silently run a rollout nobody may have meant, so every file of a clash is refused
and each problem names the other file and line. The report depends only on the set of files, so it is
the same every time a directory is re-read.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.spec_loader import LocatedSpec, SpecProblem

KINDS = ("service", "host", "rollout name")


def _identities(located: LocatedSpec) -> list[tuple[str, str, str]]:
    """(kind, key, field whose line to show) for every identity a spec claims."""
    spec = located.spec
    host = spec.fqdn
    if "." not in host:  # Istio reads a short host name in the VirtualService's namespace
        host = f"{host}.{spec.namespace}.svc.cluster.local"
    return [
        ("service", f"{spec.namespace}/{spec.service}", "service"),
        ("host", host, "host" if spec.host is not None else "service"),
        ("rollout name", spec.rollout_name, "name" if spec.name is not None else "service"),
    ]


def ownership_problems(specs: Sequence[LocatedSpec]) -> list[SpecProblem]:
    """A problem for every spec that shares a service, host or rollout name with another (each pair once)."""
    claims: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, located in enumerate(specs):
        for kind, key, field in _identities(located):
            claims.setdefault((kind, key), []).append((i, field))
    reported: set[tuple[int, int]] = set()
    problems: list[SpecProblem] = []
    ordered = sorted(claims.items(), key=lambda item: KINDS.index(item[0][0]))  # stable: files keep their order
    for (kind, key), owners in ordered:  # a pair clashing on several identities is reported once, by the first
        for i, field in owners:
            for j, other_field in owners:
                if i == j or (i, j) in reported:
                    continue
                reported.add((i, j))
                mine, other = specs[i], specs[j]
                reason = (
                    f"{kind} {key!r} is also claimed by {other.file}:{other.line(other_field)}: "
                    "one spec per service and rollout name; neither file is applied until one is changed or removed"
                )
                problems.append(SpecProblem(mine.file, mine.line(field), field, reason))
    return sorted(problems, key=lambda p: (p.file, p.line, p.reason))


def without_clashes(specs: Sequence[LocatedSpec]) -> tuple[list[LocatedSpec], list[SpecProblem]]:
    """The specs that own their service alone, and the clash problems of the others."""
    problems = ownership_problems(specs)
    refused = {problem.file for problem in problems}
    return [s for s in specs if s.file not in refused], problems
