"""What the board's browser tests share: projects to show, what to read off the page, and
the DevTools calls that set a viewport, a media feature or a vision deficiency."""

from __future__ import annotations

import json

from support import ROOT

# The files a copy of the board hosted elsewhere carries (board.html's <script>/<link>).
BOARD_FILES = {
    "/board.html": ("board.html", "text/html; charset=utf-8"),
    "/board.js": ("board.js", "text/javascript; charset=utf-8"),
    "/board.css": ("board.css", "text/css; charset=utf-8"),
    "/public-status.js": ("public-status.js", "text/javascript; charset=utf-8"),
}
STATUSES = ("available", "reserved", "sold", "unreleased", "hidden")
STATE = "document.getElementById('connection').dataset.state"
TILES = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-unit]')]"
         ".map(e => [e.dataset.unit, e.dataset.status])))")
DESKTOP = {"width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}


def add_building(pg, upstream, prefix: str = "board", floors=(1, 2, 3), per_floor: int = 4,
                 special: dict | None = None) -> tuple[str, dict]:
    """A project of `floors` x `per_floor` units on the fake client API, open (available)
    but for `special` (unit -> the client's word; by default, on 3 x 4, one unit of each
    of the other four statuses). Returns (slug, the client's statuses)."""
    slug = pg.add_project(pg.unique_slug(prefix), base_url=upstream.url, interval=0.2)
    statuses = {f"{floor}{unit:02d}": "open" for floor in floors for unit in range(1, per_floor + 1)}
    if special is None:
        special = {"102": "held", "203": "closed", "304": "coming soon", "301": "disabled"}
    statuses.update(special)
    upstream.set_statuses(f"/{slug}", statuses)
    return slug, statuses


def set_viewport(browser, viewport: dict) -> None:
    browser.call("Emulation.setDeviceMetricsOverride", **viewport)


def set_media(browser, **features: str) -> None:
    """`set_media(browser, prefers_reduced_motion="reduce")`"""
    browser.call("Emulation.setEmulatedMedia", features=[
        {"name": name.replace("_", "-"), "value": value} for name, value in features.items()])


def in_section(slug: str, selector: str) -> str:
    return f"document.querySelector('section[data-project=\"{slug}\"] {selector}')"


def tile(unit: str, slug: str | None = None) -> str:
    found = f"[data-unit=\"{unit}\"]"
    return in_section(slug, found) if slug else f"document.querySelector('{found}')"


def wait_tile(browser, unit: str, status: str, slug: str | None = None, timeout: float = 10) -> None:
    browser.wait_for(f"{tile(unit, slug)}?.dataset.status === '{status}'", timeout=timeout)


def settle(browser) -> None:
    """Wait until no highlight runs (axe reads the colours as they are at that moment)."""
    browser.wait_for("document.getAnimations().length === 0", timeout=5)


def grid_names(browser) -> dict:
    """Unit -> its name in Chromium's accessibility tree (what a screen reader reads)."""
    nodes = browser.call("Accessibility.getFullAXTree")["nodes"]
    names = [node["name"]["value"] for node in nodes
             if node.get("role", {}).get("value") == "gridcell" and not node.get("ignored")]
    return {name.split(",")[0].split(":")[0].removeprefix("Unit "): name for name in names}


def press(browser, key: str, shift: bool = False) -> None:
    """One key press, as a keyboard makes it (keydown, the character, keyup)."""
    codes = {"Tab": 9, "Enter": 13, " ": 32, "End": 35, "Home": 36, "ArrowLeft": 37,
             "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}
    code = {" ": "Space"}.get(key, key)
    text = {"Enter": "\r", " ": " "}.get(key)
    common = {"key": key, "code": code, "windowsVirtualKeyCode": codes[key],
              "modifiers": 8 if shift else 0}
    browser.call("Input.dispatchKeyEvent", type="keyDown", **common, **({"text": text} if text else {}))
    browser.call("Input.dispatchKeyEvent", type="keyUp", **common)


def focused(browser) -> str:
    """What has the focus: a unit's id, a legend entry's status, or the element's tag#id."""
    return browser.evaluate("""(() => { const e = document.activeElement;
        return e.dataset.unit ? 'unit ' + e.dataset.unit
             : e.dataset.legend ? 'legend ' + e.dataset.legend
             : e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : ''); })()""")


def axe_violations(browser) -> list[dict]:
    """axe-core (tests/node, `npm ci`) on the page as it is: WCAG 2.1 A and AA."""
    source = ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
    assert source.exists(), "axe-core is missing: cd tests/node && npm ci (make test does)"
    browser.evaluate(source.read_text())
    result = browser.call("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression="""
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},
                           resultTypes: ['violations']})
           .then(r => JSON.stringify(r.violations.map(v => ({id: v.id, impact: v.impact,
                 nodes: v.nodes.slice(0, 3).map(n => [n.target.join(' '), n.failureSummary])}))))""")
    if "exceptionDetails" in result:
        raise RuntimeError(result["exceptionDetails"].get("text", "axe failed"))
    return json.loads(result["result"]["value"])
