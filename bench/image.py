"""Build Ramp's container image with podman, with no network, and measure it.

    .venv/bin/python -m bench.image          # build, measure, rewrite the "Image" section of BENCHMARKS.md
    .venv/bin/python -m bench.image --cached # the same on the cached bases

Without --cached the bases are made afresh and the build uses no cache: the times are a first build's.

No registry is reachable here, so the bases are made from Debian's packages with mmdebstrap (the build base:
bookworm minbase with python3, venv, pip; the runtime base: Debian's Essential set with python3, no apt, no
perl) and imported with `podman import`, each once per machine: a base is rebuilt only when its image (named
after its recipe) is missing. The host's pip builds a wheelhouse (Ramp's wheel
from a clean copy of the source, plus every dependency); `podman build --network=none` installs only from it.

podman runs as root with the `runc` runtime and explicit ulimits no higher than the host's hard limits
(podman's defaults are refused on this host; crun in Debian 12 refuses its hybrid cgroups). Every podman,
mmdebstrap and pip call has a total deadline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("podman", "mmdebstrap", "runc")
SUITE = "bookworm"


@dataclass(frozen=True)
class Base:
    kind: str
    variant: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = ()  # mmdebstrap --customize-hook commands


# The build stage: bookworm minbase plus python3, venv, pip and ca-certificates.
BUILD_BASE = Base("build", "minbase", ("python3", "python3-venv", "python3-pip", "ca-certificates"))
# The runtime: Debian's Essential set plus python3, libstdc++6 (google-re2's and other wheels' C++ code),
# ca-certificates and passwd (useradd); no apt. Perl comes in
# only through usrmerge (/usr is merged already, which usr-is-merged asserts): purged, it is 65 MB less.
RUNTIME_BASE = Base(
    "runtime",
    "essential",
    ("python3", "libstdc++6", "ca-certificates", "passwd", "usr-is-merged"),
    ('chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl '
     "perl-modules-5.36 libperl5.36",),
)
# Documentation, manual pages and translations are not needed in an image (copyright files stay).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
SOURCE = ("pyproject.toml", "README.md", "controller", "services")
ULIMIT_CAP = 16384  # podman (runc) refused nproc above ~32768 here, under a hard limit of 96365


class ImageError(RuntimeError):
    """A podman, mmdebstrap or pip step failed or overran its deadline; the message says which and why."""


def missing_tools() -> list[str]:
    """The tools needed to build and run the image that are not installed."""
    return [tool for tool in TOOLS if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]


def _limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return ULIMIT_CAP if hard == resource.RLIM_INFINITY else min(hard, ULIMIT_CAP)


def runtime_flags() -> list[str]:
    """podman flags every container (and every build step) needs here: runc, ulimits within the hard limits."""
    nofile, nproc = _limit(resource.RLIMIT_NOFILE), _limit(resource.RLIMIT_NPROC)
    return ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run(argv: Sequence[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a total deadline; never raises on a non-zero exit (the caller decides)."""
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} overran its {timeout:.0f} s deadline") from exc


def checked(argv: Sequence[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = run(argv, timeout, cwd)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise ImageError(f"{' '.join(argv[:3])} ... exited {result.returncode}:\n{tail}")
    return result


def base_tag(base: Base) -> str:
    """The base image's name: it changes whenever what goes into it changes, so a cached base is never stale."""
    recipe = "\n".join([SUITE, base.variant, *base.packages, *base.hooks, *DPKG_OPTIONS])
    return f"localhost/ramp-base-{base.kind}:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def image_exists(tag: str) -> bool:
    return run(["podman", "image", "exists", tag], timeout=60).returncode == 0


def ensure_base(base: Base, timeout: float = 600) -> tuple[str, float | None]:
    """The base image, made when missing: (tag, seconds spent making it, None when it was cached)."""
    tag = base_tag(base)
    if image_exists(tag):
        return tag, None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ramp-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        dpkg = [f"--dpkgopt={option}" for option in DPKG_OPTIONS]
        hooks = [f"--customize-hook={hook}" for hook in base.hooks]
        checked(
            ["mmdebstrap", "--quiet", f"--variant={base.variant}", f"--include={','.join(base.packages)}", *dpkg,
             *hooks, "--format=tar", SUITE, str(tarball)],
            timeout=timeout,
        )
        checked(["podman", "import", "--change", 'CMD ["/bin/sh"]', str(tarball), tag], timeout=300)
    return tag, time.monotonic() - started


def ensure_bases() -> tuple[str, str, float | None]:
    """(build base, runtime base, seconds spent making them, None when both were cached)."""
    build, build_s = ensure_base(BUILD_BASE)
    runtime, runtime_s = ensure_base(RUNTIME_BASE)
    spent = [s for s in (build_s, runtime_s) if s is not None]
    return build, runtime, (sum(spent) if spent else None)


def build_wheelhouse(dest: Path, timeout: float = 300) -> list[str]:
    """Ramp's wheel, built from a clean copy of the source (no stale build/ tree), and all its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ramp-src-") as tmp:
        for name in SOURCE:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, Path(tmp, name), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, Path(tmp, name))
        checked(
            [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet", "--wheel-dir",
             str(dest), tmp],
            timeout=timeout,
        )
    return sorted(p.name for p in dest.glob("*.whl"))


def make_context(dest: Path, wheelhouse: Path | None = None) -> Path:
    """A build context: the Dockerfile, .dockerignore and the wheelhouse (built here unless given)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Dockerfile", dest / "Dockerfile")
    shutil.copy2(REPO / ".dockerignore", dest / ".dockerignore")
    if wheelhouse is None:
        build_wheelhouse(dest / "wheelhouse")
    else:
        shutil.copytree(wheelhouse, dest / "wheelhouse")
    return dest


def podman_build(
    context: Path, tag: str, base: str, runtime: str, timeout: float = 600, no_cache: bool = False
) -> subprocess.CompletedProcess[str]:
    """`podman build` with no network; returns the finished process (a failed build has a non-zero exit).

    --layers=false: one layer per stage and no intermediate images left behind (each build's wheelhouse differs,
    so a layer cache would only pile up dangling images)."""
    cache = ["--no-cache"] if no_cache else []
    return run(
        ["podman", "build", "--network=none", "--pull=never", "--layers=false", "--force-rm", *cache, *runtime_flags(),
         "--build-arg",
         f"BASE_IMAGE={base}", "--build-arg", f"RUNTIME_IMAGE={runtime}", "--tag", tag, str(context)],
        timeout=timeout,
    )


@dataclass(frozen=True)
class Built:
    tag: str
    build_s: float  # podman build alone (wheelhouse and bases excluded)
    wheelhouse_s: float
    base_s: float | None  # None: both bases were cached
    size_bytes: int
    base_size_bytes: int
    layers: list[tuple[int, str]]  # (size, created by) for the layers above the runtime base
    largest: list[tuple[int, str]]  # (kB, name) of the largest installed packages


def largest_packages(tag: str, count: int = 5) -> list[tuple[int, str]]:
    script = f"cd /opt/ramp/lib/python3*/site-packages && du -sk -- * | sort -n | tail -n {count}"
    out = podman_run(tag, "-c", script, flags=["--entrypoint", "/bin/sh"]).stdout
    rows = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    return sorted(((int(kb), name) for kb, name in rows if kb.isdigit()), reverse=True)


def image_size(tag: str) -> int:
    return int(checked(["podman", "image", "inspect", "--format", "{{.Size}}", tag], timeout=60).stdout.strip())


def layers_above_base(tag: str, base: str) -> list[tuple[int, str]]:
    """The image's own layers (size, instruction), newest first, without the runtime base's."""
    def history(name: str) -> list[tuple[int, str]]:
        out = checked(["podman", "history", "--format", "json", name], timeout=60).stdout
        rows = json.loads(out)
        if not isinstance(rows, list):
            raise ImageError(f"podman history {name}: not a list")
        return [(int(row.get("size") or 0), str(row.get("CreatedBy", "")).strip()) for row in rows]

    own, below = history(tag), history(base)
    return own[: len(own) - len(below)]


def build(tag: str = "localhost/ramp:test", fresh: bool = False) -> Built:
    """Bases (cached unless `fresh`), wheelhouse, image (no layer cache when `fresh`): the offline build, measured."""
    if fresh:
        for recipe in (BUILD_BASE, RUNTIME_BASE):
            run(["podman", "rmi", "--force", base_tag(recipe)], timeout=300)
    base, runtime, base_s = ensure_bases()
    with tempfile.TemporaryDirectory(prefix="ramp-image-") as tmp:
        started = time.monotonic()
        context = make_context(Path(tmp) / "context")
        wheelhouse_s = time.monotonic() - started
        started = time.monotonic()
        result = podman_build(context, tag, base, runtime, no_cache=fresh)
        build_s = time.monotonic() - started
    if result.returncode != 0:
        raise ImageError(f"podman build exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return Built(
        tag, build_s, wheelhouse_s, base_s, image_size(tag), image_size(runtime), layers_above_base(tag, runtime),
        largest_packages(tag),
    )


def podman_run(image: str, *args: str, flags: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess[
    str
]:
    """`podman run` as the image's non-root user, read-only root filesystem, no network unless `flags` say so."""
    network = [] if any(f.startswith("--network") for f in flags) else ["--network=none"]
    return run(
        ["podman", "run", "--rm", "--read-only", *runtime_flags(), *network, *flags, image, *args], timeout=timeout
    )


def mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 1_000_000 else f"{size / 1000:.1f} kB"


def section(built: Built, info: dict[str, str]) -> str:
    largest = ", ".join(f"{name} {mb(kb * 1024)}" for kb, name in built.largest)
    base = "both cached" if built.base_s is None else f"{built.base_s:.0f} s (made on this run)"
    return f"""## Image

Measured {info['date']} on {info['cpu']}, {info['memory']}, {info['os']}:
`.venv/bin/python -m bench.image` (rewrites this section only).

Built with podman (runc) and `--network=none` on Debian bookworm bases made with mmdebstrap (runtime: the
Essential set + python3, libstdc++6, ca-certificates, passwd, without apt or perl; build stage: minbase + python3, venv,
pip), installing only from a wheelhouse the host's pip builds (bases made once per machine, then cached).
The official `python:3.11-slim` (the Dockerfile's default base) is not reachable here.

| figure | value |
| --- | --- |
| image size | {mb(built.size_bytes)} |
| of which the runtime base | {mb(built.base_size_bytes)} |
| Ramp's own layers | {mb(sum(size for size, _ in built.layers))} |
| wheelhouse (host pip) | {built.wheelhouse_s:.1f} s |
| podman build | {built.build_s:.1f} s |
| bases (mmdebstrap + import) | {base} |
| non-empty layers above the base | {", ".join(mb(size) for size, _ in built.layers if size > 0)} |

The final stage is committed as one layer (`--layers=false`): the venv in /opt/ramp and the ramp user, nothing
copied in and deleted later, no pip, no wheels, no build tools. Largest installed packages: {largest}.
The kubernetes client's asyncio copy (`kubernetes/aio`, about 68 MB), which Ramp never imports, is left out.
"""


def existing_section(path: Path) -> str | None:
    """The current "## Image" section of BENCHMARKS.md, if any (so a writer of the other sections can keep it)."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if "\n## Image\n" not in current:
        return None
    rest = current.split("\n## Image\n", 1)[1]
    ends = [i for i in (rest.find("\n## "), rest.find("\n<details>")) if i >= 0]
    return "## Image\n" + (rest[: min(ends)] if ends else rest).rstrip("\n") + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the "## Image" section of BENCHMARKS.md (or add it before the raw results); keep the rest."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Ramp benchmarks\n\n"
    block = text.rstrip("\n") + "\n\n"
    if "\n## Image\n" in current:
        head, rest = current.split("\n## Image\n", 1)
        following = rest.find("\n## ")
        details = rest.find("\n<details>")
        ends = [i for i in (following, details) if i >= 0]
        tail = rest[min(ends) + 1:] if ends else ""
        updated = head + "\n" + block + tail
    elif "\n<details>" in current:
        head, tail = current.split("\n<details>", 1)
        updated = head.rstrip("\n") + "\n\n" + block + "<details>" + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    path.write_text(updated, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.image")
    parser.add_argument("--tag", default="localhost/ramp:bench")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--cached", action="store_true", help="keep the cached bases")
    args = parser.parse_args(argv)
    if missing := missing_tools():
        print(f"bench.image: not installed: {', '.join(missing)} (run .ci/bootstrap.sh)", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("bench.image: podman runs as root here", file=sys.stderr)
        return 1
    from bench import machine

    built = build(args.tag, fresh=not args.cached)
    write_section(args.output, section(built, machine.describe()))
    run(["podman", "rmi", "--force", args.tag], timeout=120)
    print(f"bench.image: {mb(built.size_bytes)}, built in {built.build_s:.1f} s; wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
