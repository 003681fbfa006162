"""Headless Chromium over the Chrome DevTools Protocol: load a page, collect what it logs and requests, evaluate,
and take screenshots, for testing Ramp's HTML reports in a real browser.

    with HeadlessChromium() as browser:
        page = browser.open(tmp_path / "report.html", ready_js="window.reportReady === true")
        assert page.console_errors == []
        assert all(url.startswith("file://") for url in page.requests)
        page.screenshot(artifacts_dir / "report.png")

Debian's `chromium` (/usr/bin/chromium, or env RAMP_CHROMIUM) runs headless in its own process group with a fresh
temporary profile and no background networking; everything goes over one websocket (flattened target sessions),
read by one thread. Every call has a deadline, so a stuck browser fails a test instead of hanging it, and the whole
process group is killed and the profile removed on close (also at interpreter exit if close was never reached).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.browser.cdp import (
    ChromiumError,
    ChromiumTimeout,
    Connection,
    ConsoleMessage,
    JavaScriptError,
    clip,
    js_value,
    location,
    object_text,
    output_tail,
)

__all__ = ["ChromiumError", "ChromiumTimeout", "ConsoleMessage", "HeadlessChromium", "JavaScriptError", "Page"]

DEFAULT_CHROMIUM = "/usr/bin/chromium"
VIEWPORT = (1280, 900)
MAX_SCREENSHOT_SIDE = 16384  # Chromium's own texture limit; a hostile page cannot ask for more
MAX_MESSAGES = 10_000  # per page; a runaway logging loop must not eat the test's memory
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the setuid sandbox is not available
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # closed network: no calls home, no component updates
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-breakpad",
    "--hide-scrollbars",
    "--mute-audio",
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def chromium_executable() -> Path:
    return Path(os.environ.get("RAMP_CHROMIUM") or DEFAULT_CHROMIUM)


def page_url(path_or_url: str | Path) -> str:
    """A URL as it is (anything with a scheme: file:, data:, http:...), or an existing local file's file:// URL."""
    if isinstance(path_or_url, str) and _SCHEME.match(path_or_url):
        return path_or_url
    file = Path(path_or_url).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no page to open at {file}")
    return file.as_uri()


class Page:
    """One tab in its own browser context. Collects console messages, exceptions, log entries and requests."""

    def __init__(self, conn: Connection, target_id: str, context_id: str, session_id: str, timeout: float) -> None:
        self._conn, self.target_id, self._context_id, self._session = conn, target_id, context_id, session_id
        self._timeout = timeout
        self._cond = threading.Condition()
        self._messages: list[ConsoleMessage] = []
        self._dropped = 0
        self._requests: list[str] = []
        self._request_urls: dict[str, str] = {}
        self._failed: list[str] = []
        self._main_loader: str | None = None
        self._loaded: set[str] = set()  # loader ids of main-frame documents whose load event fired
        self._crashed = False
        self.url = "about:blank"
        conn.listen(session_id, self._on_event)

    # --- what the page did (copies: the reader thread keeps appending) ---
    @property
    def console_messages(self) -> list[ConsoleMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def console_errors(self) -> list[str]:
        with self._cond:
            errors = [f"{m.source} {m.level}: {m.text}" for m in self._messages if m.is_error]
            return errors + ([f"{self._dropped} further messages dropped"] if self._dropped else [])

    @property
    def requests(self) -> list[str]:
        with self._cond:
            return list(self._requests)

    @property
    def failed_requests(self) -> list[str]:
        with self._cond:
            return list(self._failed)

    def _add(self, level: str, source: str, text: str) -> None:
        if len(self._messages) >= MAX_MESSAGES:
            self._dropped += 1
        else:
            self._messages.append(ConsoleMessage(level, source, clip(text)))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        with self._cond:
            try:
                self._record(method, params)
            except Exception as exc:  # never lose the reader thread to one odd event; say so instead
                self._add("error", "harness", f"could not read {method}: {type(exc).__name__}: {exc}")
            self._cond.notify_all()

    def _record(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            args = params.get("args") if isinstance(params.get("args"), list) else []
            frames = (params.get("stackTrace") or {}).get("callFrames") or [{}]
            text = " ".join(object_text(arg) for arg in args or [])
            self._add(
                str(params.get("type", "log")),
                "console",
                text + location(frames[0].get("url"), frames[0].get("lineNumber")),
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            thrown = details.get("exception")
            text = str(details.get("text") or "Uncaught")
            if thrown is not None:
                text = f"{text}: {object_text(thrown)}"
            self._add("error", "exception", text + location(details.get("url"), details.get("lineNumber")))
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            self._add(
                str(entry.get("level", "info")),
                "log",
                f"[{entry.get('source', '?')}] {entry.get('text', '')}" + location(entry.get("url"), None),
            )
        elif method == "Network.requestWillBeSent":
            url = str((params.get("request") or {}).get("url", ""))
            self._requests.append(url)
            self._request_urls[str(params.get("requestId"))] = url
        elif method == "Network.loadingFailed":
            url = self._request_urls.get(str(params.get("requestId")), "?")
            self._failed.append(f"{url}: {params.get('errorText', '?')}")
        elif method == "Page.frameNavigated":
            frame = params.get("frame") or {}
            if not frame.get("parentId"):
                self._main_loader = frame.get("loaderId")
        elif method == "Page.loadEventFired" and self._main_loader is not None:
            self._loaded.add(self._main_loader)
        elif method == "Page.javascriptDialogOpening":  # an alert() would block the page: dismiss, note it
            self._add("warning", "dialog", f"{params.get('type', 'dialog')}: {params.get('message', '')}")
            self._conn.send("Page.handleJavaScriptDialog", {"accept": False}, self._session)
        elif method == "Inspector.targetCrashed":
            self._crashed = True
            self._add("error", "exception", "the page crashed (renderer process died)")

    # --- driving the page ---
    def _call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self._conn.call(method, params, self._session, timeout or self._timeout)

    def _summary(self) -> str:
        with self._cond:
            return self._summary_locked()

    def _summary_locked(self) -> str:
        errors = [f"{m.source} {m.level}: {m.text}" for m in self._messages if m.is_error]
        return "console errors so far: " + ("; ".join(errors) if errors else "none")

    def navigate(self, path_or_url: str | Path, ready_js: str | None = None, timeout: float = 20.0) -> None:
        """Load a file or URL in this tab: its load event, then `ready_js` truthy, all within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        url = self.url = page_url(path_or_url)
        answer = self._call("Page.navigate", {"url": url}, timeout)
        if answer.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {answer['errorText']}")
        loader = answer.get("loaderId")
        with self._cond:  # the load event of the document that this navigation committed
            while loader is not None and loader not in self._loaded and not self._crashed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChromiumTimeout(
                        f"page {url} did not finish loading within {timeout:.1f}s; {self._summary_locked()}"
                    )
                self._cond.wait(remaining)
        if self._crashed:
            raise ChromiumError(f"page {url} crashed while loading; {self._summary()}")
        if ready_js is not None:
            self._wait_ready(ready_js, deadline, timeout)

    def _wait_ready(self, ready_js: str, deadline: float, timeout: float) -> None:
        probe = f"(async () => !!(await (\n{ready_js}\n)))()"
        last = "not evaluated yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._crashed:
                raise ChromiumTimeout(
                    f"page {self.url}: ready_js {ready_js!r} was not truthy within {timeout:.1f}s "
                    f"(last: {last}); {self._summary()}"
                )
            try:
                if self.evaluate(probe, timeout=min(remaining, 5.0)) is True:
                    return
                last = "false"
            except (ChromiumError, ChromiumTimeout) as exc:  # not defined yet, or the document is still changing
                if self._conn.dead is not None:
                    raise
                last = str(exc)
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def evaluate(self, js: str, timeout: float | None = None) -> Any:
        """The expression's value (JSON-like; awaits a promise). Raises JavaScriptError if it throws."""
        answer = self._call(
            "Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True}, timeout
        )
        details = answer.get("exceptionDetails")
        if details:
            thrown = details.get("exception")
            reason = object_text(thrown) if thrown is not None else str(details.get("text", "exception"))
            raise JavaScriptError(f"JavaScript {clip(js)!r} threw: {clip(reason)}")
        result = answer.get("result") or {}
        return js_value(result)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the viewport, or of the whole page (its content size, capped at 16384 px a side)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self._call("Page.getLayoutMetrics").get("cssContentSize") or {}
            width, height = (
                min(MAX_SCREENSHOT_SIDE, max(1, math.ceil(float(size.get(k) or 1)))) for k in ("width", "height")
            )
            params.update(
                captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            )
        data = base64.b64decode(self._call("Page.captureScreenshot", params, max(self._timeout, 30.0))["data"])
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ChromiumError(f"screenshot of {self.url} is not a PNG ({len(data)} bytes)")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
        return path

    def close(self) -> None:
        self._conn.listen(self._session, None)
        if self._conn.dead is None:
            for method, params in (
                ("Target.closeTarget", {"targetId": self.target_id}),
                ("Target.disposeBrowserContext", {"browserContextId": self._context_id}),
            ):
                with contextlib.suppress(ChromiumError, ChromiumTimeout):
                    self._conn.call(method, params, timeout=5.0)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(process: subprocess.Popen[bytes], root: str) -> None:
    """Kill Chromium's whole process group (renderers, GPU, crashpad) and remove its profile. Idempotent."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    shutil.rmtree(root, ignore_errors=True)


class HeadlessChromium:
    """Debian's chromium, headless, with a fresh profile; a context manager that always cleans up."""

    def __init__(
        self,
        executable: str | Path | None = None,
        *,
        start_timeout: float = 20.0,
        call_timeout: float = 10.0,
        viewport: tuple[int, int] = VIEWPORT,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.executable = Path(executable) if executable is not None else chromium_executable()
        self.start_timeout, self.call_timeout, self.viewport = start_timeout, call_timeout, viewport
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._root: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.version = ""  # Chromium's product string, once started

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _stderr(self) -> str:
        return output_tail(self._root / "chromium.log") if self._root is not None else "(not started)"

    def _why_dead(self) -> str:
        """For the connection's last words: did Chromium exit (it closes the socket just before)?"""
        if self._process is None:
            return "chromium not started"
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1.0)
        code = self._process.returncode
        return f"chromium exit code {code}" if code is not None else "chromium still running"

    def start(self) -> None:
        if self._process is not None:
            raise ChromiumError("this HeadlessChromium is already started")
        if not (self.executable.is_file() and os.access(self.executable, os.X_OK)):
            raise ChromiumError(
                f"no Chromium executable at {self.executable} (run .ci/bootstrap.sh --browser, or set RAMP_CHROMIUM)"
            )
        self._root = Path(tempfile.mkdtemp(prefix="ramp-chromium-"))
        profile = self._root / "profile"
        width, height = self.viewport
        command = [
            str(self.executable),
            *CHROMIUM_FLAGS,
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            *self.extra_args,
            "about:blank",
        ]
        with open(self._root / "chromium.log", "wb") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._finalizer = weakref.finalize(self, _kill, self._process, str(self._root))
        try:
            self._conn = Connection(
                self._wait_for_port(profile / "DevToolsActivePort"), self.call_timeout, self._why_dead
            )
            self.version = str(self._conn.call("Browser.getVersion", timeout=self.call_timeout).get("product", "?"))
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, port_file: Path) -> str:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ChromiumError(
                    f"{self.executable} exited with code {self._process.returncode} while starting; "
                    f"its output:\n{self._stderr()}"
                )
            try:
                port, path = port_file.read_text().splitlines()[:2]
                if port.isdigit() and 0 < int(port) < 65536 and path.startswith("/devtools/browser/"):
                    return f"ws://127.0.0.1:{port}{path}"
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise ChromiumTimeout(
            f"{self.executable} did not open its DevTools port within {self.start_timeout:.1f}s; "
            f"its output:\n{self._stderr()}"
        )

    def open(self, path_or_url: str | Path, ready_js: str | None = None, timeout: float = 20.0) -> Page:
        """A new tab with the file or URL loaded (load event, then `ready_js` truthy). Close it when done."""
        if self._conn is None:
            raise ChromiumError("HeadlessChromium.open before start() (use it as a context manager)")
        url = page_url(path_or_url)
        conn, limit = self._conn, self.call_timeout
        context = str(conn.call("Target.createBrowserContext", timeout=limit)["browserContextId"])
        target = str(
            conn.call("Target.createTarget", {"url": "about:blank", "browserContextId": context}, timeout=limit)[
                "targetId"
            ]
        )
        session = str(
            conn.call("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=limit)["sessionId"]
        )
        page = Page(conn, target, context, session, limit)
        try:
            for domain in ("Runtime", "Log", "Network", "Page", "Inspector"):
                page._call(f"{domain}.enable")
            width, height = self.viewport
            page._call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            page.navigate(url, ready_js, timeout)
        except BaseException:
            page.close()
            raise
        return page

    def close(self) -> None:
        """Close the browser (politely, then the whole process group) and remove the profile. Idempotent."""
        if self._conn is not None and self._conn.dead is None:
            with contextlib.suppress(ChromiumError, subprocess.TimeoutExpired):
                self._conn.send("Browser.close")
                if self._process is not None:
                    self._process.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()
        if self._finalizer is not None:
            self._finalizer()  # kills the group (stragglers too) and removes the profile, once

    def __enter__(self) -> HeadlessChromium:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
