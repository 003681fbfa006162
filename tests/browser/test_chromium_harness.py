"""The headless-Chromium harness itself, on small local pages: what it catches, what it waits for, what it keeps."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.browser.chromium import ChromiumError, ChromiumTimeout, HeadlessChromium, JavaScriptError

REPO_ROOT = Path(__file__).resolve().parents[2]
STYLE = "<style>html, body { margin: 0 }</style>"


def write_page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    page = tmp_path / name
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{STYLE}</head><body>{body}</body></html>")
    return page


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def live_group_members(pgid: int) -> list[str]:
    """Processes (not zombies) still in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(entry.name)
    return members


def test_a_clean_page_has_no_console_errors_and_loads_only_itself(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(tmp_path, "<h1 id='t'>ok</h1><script>console.log('rendered', 3)</script>")
    with chromium.open(page_file) as page:
        assert page.console_errors == []
        assert [(m.level, m.source, m.text) for m in page.console_messages] == [
            ("log", "console", f"rendered 3 ({page_file.as_uri()}:1)")
        ]
        assert page.requests == [page_file.as_uri()]
        assert page.failed_requests == []
        assert page.evaluate("document.getElementById('t').textContent") == "ok"


def test_console_error_and_assert_are_caught(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(
        tmp_path,
        "<script>console.error('chart failed:', 42); console.warn('only a warning');"
        "console.assert(1 === 2, 'series missing')</script>",
    )
    with chromium.open(page_file) as page:
        errors = page.console_errors
        assert len(errors) == 2, errors
        assert errors[0].startswith("console error: chart failed: 42 (file://")
        assert errors[1].startswith("console assert: series missing")
        assert any(m.level == "warning" and m.text.startswith("only a warning") for m in page.console_messages)


def test_uncaught_exceptions_are_caught_with_their_message(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(
        tmp_path,
        "<script>throw new TypeError('uPlot is not a constructor')</script>"
        "<script>setTimeout(() => { window.later = true; throw 'thrown later' }, 20)</script>",
    )
    with chromium.open(page_file, ready_js="window.later === true") as page:
        deadline = time.monotonic() + 5
        while len(page.console_errors) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        errors = page.console_errors
        assert len(errors) == 2, errors
        assert errors[0].startswith("exception error: Uncaught: TypeError: uPlot is not a constructor")
        assert "thrown later" in errors[1]


def test_external_requests_are_recorded_and_fail_as_errors(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(
        tmp_path,
        "<script src='https://example.invalid/x.js'></script>"
        "<link rel='stylesheet' href='http://127.0.0.1:9/font.css'>",
    )
    with chromium.open(page_file) as page:
        assert page.requests[0] == page_file.as_uri()
        assert set(page.requests[1:]) == {"https://example.invalid/x.js", "http://127.0.0.1:9/font.css"}
        assert [url for url in page.requests if not url.startswith("file://")]  # what a report test asserts empty
        failed = page.failed_requests
        assert any(f.startswith("https://example.invalid/x.js: net::ERR_") for f in failed), failed
        assert any("example.invalid/x.js" in error for error in page.console_errors), page.console_errors


def test_ready_js_timeout_names_the_expression_and_the_errors(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(tmp_path, "<script>console.error('data failed to parse')</script>")
    started = time.monotonic()
    with pytest.raises(ChromiumTimeout) as caught:
        # 3 s: loading a first file:// page starts a renderer, which a loaded machine can take a second or more for
        chromium.open(page_file, ready_js="document.querySelector('#chart-weights canvas')", timeout=3.0)
    assert time.monotonic() - started < 8
    message = str(caught.value)
    assert isinstance(caught.value, TimeoutError)
    assert "document.querySelector('#chart-weights canvas')" in message
    assert "within 3.0s" in message
    assert "data failed to parse" in message


def test_ready_js_waits_for_a_late_page(chromium: HeadlessChromium, tmp_path: Path) -> None:
    page_file = write_page(tmp_path, "<script>setTimeout(() => { document.body.dataset.ready = 'yes' }, 300)</script>")
    with chromium.open(page_file, ready_js="document.body.dataset.ready === 'yes'") as page:
        assert page.evaluate("document.body.dataset.ready") == "yes"


def test_evaluate_returns_values_and_raises_on_exceptions(chromium: HeadlessChromium, tmp_path: Path) -> None:
    with chromium.open(write_page(tmp_path, "<div data-series='3'></div>")) as page:
        assert page.evaluate("document.querySelector('div').dataset.series") == "3"
        assert page.evaluate("Promise.resolve({a: [1, 2.5, null]})") == {"a": [1, 2.5, None]}
        assert page.evaluate("undefined") is None
        assert page.evaluate("1 / 0") == float("inf")
        assert page.evaluate("-0") == 0.0
        assert page.evaluate("2n ** 70n") == 2**70
        nan = page.evaluate("NaN")
        assert nan != nan
        with pytest.raises(JavaScriptError, match="ReferenceError: chartz is not defined"):
            page.evaluate("chartz.length")
        with pytest.raises(JavaScriptError, match="rejected"):
            page.evaluate("Promise.reject(new Error('rejected'))")


def test_hostile_pages_do_not_hang_the_harness(chromium: HeadlessChromium, tmp_path: Path) -> None:
    with chromium.open(write_page(tmp_path, "<script>alert('blocking?'); window.after = 1</script>")) as page:
        assert page.evaluate("window.after") == 1  # the dialog was dismissed, not left to block the page
        assert any(m.source == "dialog" and "blocking?" in m.text for m in page.console_messages)
    with pytest.raises(FileNotFoundError, match=r"nothing\.html"):
        chromium.open(tmp_path / "nothing.html")
    with pytest.raises(ChromiumError, match="ERR_FILE_NOT_FOUND"):
        chromium.open((tmp_path / "nothing.html").as_uri())


def test_screenshots_are_pngs_of_the_page_or_the_viewport(chromium: HeadlessChromium, tmp_path: Path) -> None:
    tall = write_page(tmp_path, "<div style='height: 2000px; background: linear-gradient(#fff, #236)'>top</div>")
    with chromium.open(tall) as page:
        assert png_size(page.screenshot(tmp_path / "shots" / "full.png")) == (1280, 2000)
        assert png_size(page.screenshot(tmp_path / "view.png", full_page=False)) == (1280, 900)
    with chromium.open(write_page(tmp_path, "<p>short</p>", "short.html")) as page:
        assert png_size(page.screenshot(tmp_path / "short.png")) == (1280, 900)
    assert not list(tmp_path.rglob("*.partial"))


def test_artifacts_dir_is_gitignored(artifacts_dir: Path) -> None:
    assert artifacts_dir == REPO_ROOT / "tests" / "artifacts"
    assert artifacts_dir.is_dir()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(artifacts_dir / "report.png")], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "tests/artifacts/ must be in .gitignore"


def test_close_kills_the_process_group_and_removes_the_profile() -> None:
    with HeadlessChromium() as browser:
        pid, root = browser.pid, browser._root
        assert pid is not None and root is not None and root.is_dir()
        assert len(live_group_members(pid)) > 1  # browser, zygotes, renderer...
        browser.open("data:text/html,<p>x</p>").close()
    assert live_group_members(pid) == []
    assert not root.exists()
    browser.close()  # idempotent


def test_a_browser_that_dies_fails_calls_at_once_instead_of_hanging(tmp_path: Path) -> None:
    with HeadlessChromium() as browser:
        page = browser.open(write_page(tmp_path, "<p>first</p>"))
        page.navigate(
            write_page(tmp_path, "<p id='p'>second</p>", "second.html"), ready_js="document.getElementById('p')"
        )
        assert page.evaluate("document.getElementById('p').textContent") == "second"
        assert browser.pid is not None
        os.killpg(browser.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ChromiumError, match="exit code -9"):
            page.evaluate("1")
        with pytest.raises(ChromiumError, match="connection is closed"):
            browser.open(tmp_path / "page.html")
        assert time.monotonic() - started < 5
    assert live_group_members(browser.pid) == []


def fake_chromium(tmp_path: Path, script: str) -> Path:
    exe = tmp_path / "fake-chromium"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_a_chromium_that_dies_at_start_fails_with_its_output(tmp_path: Path) -> None:
    exe = fake_chromium(tmp_path, "echo 'error while loading shared libraries: libnss3.so' >&2; exit 127")
    with pytest.raises(ChromiumError, match=r"(?s)exited with code 127.*libnss3\.so"):
        HeadlessChromium(exe).start()
    with pytest.raises(ChromiumError, match=r"run \.ci/bootstrap\.sh --browser"):
        HeadlessChromium(tmp_path / "missing").start()


def test_a_chromium_that_never_listens_times_out_and_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "child.pid"
    exe = fake_chromium(tmp_path, f"echo starting >&2; sleep 60 & echo $! > {pid_file}; wait")
    monkeypatch.setenv("RAMP_CHROMIUM", str(exe))
    browser = HeadlessChromium(start_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ChromiumTimeout, match=r"(?s)did not open its DevTools port within 1\.0s.*starting"), browser:
        pass
    assert time.monotonic() - started < 10
    assert browser.pid is not None and live_group_members(browser.pid) == []
    assert not alive(int(pid_file.read_text()))  # its children too
