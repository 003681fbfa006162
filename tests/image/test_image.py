"""The built image, run as its non-root user with a read-only root filesystem and no network.

`ramp --help`, `ramp validate` and `ramp plan` on the example specs work from what is inside the image alone
(the Istio CRDs ship in the wheel); a broken spec exits 1; the default command is complete (no usage error);
the final stage carries no pip, no build tools, no wheelhouse and no dead layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import image as img
from tests.image.conftest import readable_copy

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "rollout-specs"
pytestmark = pytest.mark.usefixtures("podman_ready")


def ramp(image: str, *args: str, mounts: tuple[tuple[Path, str], ...] = ()) -> tuple[int, str, str]:
    flags = ["--entrypoint", "ramp"]
    for host, inside in mounts:
        flags += ["--volume", f"{host}:{inside}:ro"]
    result = img.podman_run(image, *args, flags=flags)
    return result.returncode, result.stdout, result.stderr


def shell(image: str, script: str) -> tuple[int, str, str]:
    result = img.podman_run(image, "-c", script, flags=["--entrypoint", "/bin/sh"])
    return result.returncode, result.stdout, result.stderr


def test_ramp_help_runs_as_the_non_root_user_on_a_read_only_root(image: str) -> None:
    code, out, err = ramp(image, "--help")
    assert code == 0, err
    assert "validate" in out and "controller" in out
    code, out, _ = shell(image, "id -u; id -g; touch /opt/ramp/x 2>/dev/null && echo writable || echo read-only")
    assert code == 0 and out.split() == ["10001", "10001", "read-only"]
    # the microservice chart runs the sample app from the same image: `python -m services.sample_app`
    code, _, err = shell(image, "python -c 'import services.sample_app'")
    assert code == 0, err


def test_validate_and_plan_every_example_spec_from_inside_the_image_alone(image: str, tmp_path: Path) -> None:
    specs = readable_copy(SPECS, tmp_path / "specs")
    code, out, err = ramp(image, "validate", "/etc/ramp/specs", mounts=((specs, "/etc/ramp/specs"),))
    assert code == 0, out + err
    names = sorted(p.name for p in SPECS.glob("*.yaml"))
    assert names and all(f"ok  /etc/ramp/specs/{name}" in out for name in names)
    for name in names:
        code, out, err = ramp(image, "plan", f"/etc/ramp/specs/{name}", mounts=((specs, "/etc/ramp/specs"),))
        assert code == 0, f"{name}: {err}"
        if "router: gateway-api" in (SPECS / name).read_text():
            assert "kind: HTTPRoute" in out and "kind: VirtualService" not in out  # the packaged Gateway API CRD
        else:
            assert "kind: VirtualService" in out and "kind: DestinationRule" in out
    # plan validates against the CRDs shipped in the image: pointing it at a missing file is an error, not a skip
    code, _, err = ramp(
        image, "plan", "--crds", "/nonexistent.yaml", "/etc/ramp/specs/demo.yaml", mounts=((specs, "/etc/ramp/specs"),)
    )
    assert code == 1 and "cannot load the CRDs (Istio, Gateway API)" in err
    code, out, _ = shell(image, "python3 -c 'import controller, os; print(os.path.dirname(controller.__file__))'")
    assert code == 0
    for packaged in ("istio-networking-crds.yaml", "gateway-api-httproutes-v1.6.1.yaml"):
        assert shell(image, f"test -s {out.strip()}/schemas/{packaged}")[0] == 0


def test_a_broken_spec_exits_1_with_the_reason(image: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (SPECS / "demo.yaml").read_text().replace("weight: 10\n", "weight: 150\n", 1)
    assert "weight: 150" in text
    (broken / "demo.yaml").write_text(text)
    specs = readable_copy(broken, tmp_path / "specs")
    code, out, err = ramp(image, "validate", "/etc/ramp/specs", mounts=((specs, "/etc/ramp/specs"),))
    assert code == 1
    assert "/etc/ramp/specs/demo.yaml:13: steps.1.weight: Input should be less than or equal to 100" in out + err
    code, _, err = ramp(image, "plan", "/etc/ramp/specs/demo.yaml", mounts=((specs, "/etc/ramp/specs"),))
    assert code == 1


def test_the_default_command_is_complete_no_usage_error(image: str) -> None:
    """`docker run IMAGE` starts the controller with its required flags; here it stops at the missing cluster."""
    result = img.podman_run(image)
    assert result.returncode == 1, result.stderr
    assert "usage:" not in result.stderr
    assert "no Kubernetes configuration found" in result.stderr


def test_the_final_stage_has_no_pip_build_tools_wheels_or_dead_layers(image: str, bases: tuple[str, str]) -> None:
    script = (
        "python3 -m pip --version >/dev/null 2>&1 && echo pip; "
        "for tool in pip pip3 gcc cc make apt-get; do command -v $tool >/dev/null 2>&1 && echo $tool; done; "
        "test -e /wheelhouse && echo wheelhouse; "
        "python3 -c 'import setuptools' 2>/dev/null && echo setuptools; "
        "du -sb /opt/ramp | cut -f1; find /opt/ramp | wc -l"
    )
    code, out, err = shell(image, script)
    assert code == 0, err
    *found, venv_bytes, entries = out.split()
    assert found == []  # (the runtime base made here has no apt either; python:3.11-slim has)
    layers = img.layers_above_base(image, bases[1])
    own = sum(size for size, _ in layers)
    # one substantial layer, the venv; the user accounts and the self-check (`ramp --help`) weigh a few kB
    assert len([size for size, _ in layers if size > 100_000]) == 1
    # every byte the image adds is in the venv it runs: nothing copied in one layer and deleted in the next (the
    # layer tarball adds at most 1 kB per entry: a 512-byte header and the padding of the content to 512 bytes)
    assert own <= int(venv_bytes) + 1024 * int(entries) + 100_000, (own, venv_bytes, entries, layers)
