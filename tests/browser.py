"""Headless Chromium, driven over the DevTools protocol: just enough to load pages in
one or more tabs, read their DOM and take a screenshot.

One websocket to the browser carries every tab's session (`Target.attachToTarget` with
`flatten`): `browser.new_tab(url)` opens another tab of the same profile, so tabs of one
origin share storage, Web Locks and BroadcastChannel, as a visitor's tabs do. The
browser's own first tab is `browser.page`, and `browser.goto`, `evaluate`... act on it."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time

import websocket

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--remote-allow-origins=*"]


class Tab:
    """One tab: its DevTools session on the browser's socket."""

    def __init__(self, browser: Browser, target_id: str, session_id: str):
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.events: list[dict] = []                 # DevTools events, kept as they come
        self.closed = False

    def call(self, method: str, **params):
        return self.browser.send(method, session_id=self.session_id, **params)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def reload(self) -> None:
        self.call("Page.reload")

    def add_init_script(self, source: str) -> None:
        """Run `source` in every document this tab loads from now on, before its scripts
        (DevTools runs such scripts only where the Page domain is on)."""
        self.call("Page.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=source)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "script error"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Evaluate until the result is truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} still falsy after {timeout}s")
            time.sleep(0.05)

    def freeze(self) -> None:
        """Freeze the page as a browser freezes a background tab (its `freeze` event fires)."""
        self.call("Page.setWebLifecycleState", state="frozen")

    def unfreeze(self) -> None:
        self.call("Page.setWebLifecycleState", state="active")

    def activate(self) -> None:
        """Bring the tab to the front: the one in front before is hidden now."""
        self.browser.send("Target.activateTarget", targetId=self.target_id)

    def crash(self) -> None:
        """Crash the tab's renderer, as an out-of-memory kill does. No answer comes (the
        renderer is gone), so none is awaited: the test watches what the others do."""
        self.closed = True
        self.browser.post("Page.crash", session_id=self.session_id)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as file:
            file.write(base64.b64decode(data))

    def close(self) -> None:
        """Close the tab as a visitor does (its `pagehide` fires)."""
        if not self.closed:
            self.closed = True
            self.browser.send("Target.closeTarget", targetId=self.target_id)


class Browser:
    """`with Browser() as browser:` one headless Chromium, its first tab `browser.page`."""

    def __init__(self, width: int = 1280, height: int = 860):
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self._process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._socket = websocket.create_connection(self._debugging_url(), timeout=10,
                                                   suppress_origin=True)
        self._ids = itertools.count(1)
        self._tabs: dict[str, Tab] = {}              # session id -> tab
        self.browser_events: list[dict] = []
        targets = self.send("Target.getTargets")["targetInfos"]
        first = next(t for t in targets if t["type"] == "page")
        self.page = self._attach(first["targetId"])

    def _debugging_url(self) -> str:
        deadline = time.monotonic() + 20
        for line in self._process.stderr:
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if time.monotonic() > deadline:
                break
        raise RuntimeError("chromium did not start")

    def _attach(self, target_id: str) -> Tab:
        session_id = self.send("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
        tab = Tab(self, target_id, session_id)
        self._tabs[session_id] = tab
        tab.call("Runtime.enable")
        return tab

    def new_tab(self, url: str = "about:blank", init_script: str | None = None) -> Tab:
        """Another tab of this browser, loading `url` (after `init_script` is in place)."""
        target_id = self.send("Target.createTarget", url="about:blank")["targetId"]
        tab = self._attach(target_id)
        if init_script:
            tab.add_init_script(init_script)
        if url != "about:blank":
            tab.goto(url)
        return tab

    @property
    def tabs(self) -> list[Tab]:
        """Every open tab, the first one first."""
        return [tab for tab in self._tabs.values() if not tab.closed]

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def post(self, method: str, session_id: str | None = None, **params) -> int:
        """Send one DevTools command without waiting for its answer; its id."""
        message_id = next(self._ids)
        command = {"id": message_id, "method": method, "params": params}
        if session_id:
            command["sessionId"] = session_id
        self._socket.send(json.dumps(command))
        return message_id

    def send(self, method: str, session_id: str | None = None, **params):
        """One DevTools command, to the browser or (with `session_id`) to one tab; the
        events that arrive meanwhile are kept by the tab (or browser) they belong to."""
        message_id = self.post(method, session_id, **params)
        while True:
            message = json.loads(self._socket.recv())
            if "method" in message:
                tab = self._tabs.get(message.get("sessionId", ""))
                (tab.events if tab else self.browser_events).append(message)
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    # The first tab, as before there were several.

    @property
    def events(self) -> list[dict]:
        return self.page.events

    def call(self, method: str, **params):
        return self.page.call(method, **params)

    def goto(self, url: str) -> None:
        self.page.goto(url)

    def evaluate(self, expression: str):
        return self.page.evaluate(expression)

    def wait_for(self, expression: str, timeout: float = 10.0):
        return self.page.wait_for(expression, timeout)

    def screenshot(self, path: str) -> None:
        self.page.screenshot(path)

    def close(self) -> None:
        try:
            self._socket.close()
        finally:
            self._process.kill()
            self._process.wait()
            shutil.rmtree(self._profile, ignore_errors=True)
