"""The board's screenshots in docs/, taken from `make run`'s demo in headless Chromium.

    .venv/bin/python scripts/board-screenshots.py

Runs demo.py (on its own database and role, removed afterwards) on a free port, then
writes docs/board.png (a laptop, 1280 x 860), docs/board-phone.png (a 390 x 844 phone),
docs/board-projects.png (both demo projects on one board) and
docs/board-deuteranopia.png (the laptop view as Chromium simulates it for a viewer
without green cones: every status must still be told apart by its mark).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from board_pages import DESKTOP, PHONE, set_viewport  # noqa: E402

from browser import Browser  # noqa: E402
from support import free_port, wait_for  # noqa: E402

NAMES = {"DEMO_DATABASE": "public_status_demo_shots", "DEMO_ROLE": "public_status_demo_shots_reader"}
SHOTS = [  # file, query, viewport, vision deficiency, fit the page's height (up to)
    ("board.png", "?project=harbour-view", DESKTOP, None, 860),
    ("board-phone.png", "?project=harbour-view", {**PHONE, "deviceScaleFactor": 2}, None, None),
    ("board-projects.png", "?project=harbour-view,marina-point", DESKTOP, None, 1200),
    ("board-deuteranopia.png", "?project=harbour-view", DESKTOP, "deuteranopia", 860),
]


def main() -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(NAMES, PORT=str(port), LOG_LEVEL="WARNING")
    demo = subprocess.Popen([sys.executable, "demo.py"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True).start()
    try:
        wait_for(lambda: any("The live status board" in line for line in lines), timeout=60)
        for name, query, viewport, vision, fit in SHOTS:
            with Browser(width=viewport["width"], height=viewport["height"]) as browser:
                set_viewport(browser, viewport)
                if vision:
                    browser.call("Emulation.setEmulatedVisionDeficiency", type=vision)
                browser.goto(f"http://127.0.0.1:{port}/{query}")
                browser.wait_for("document.getElementById('connection').dataset.state === 'live'"
                                 " && document.querySelectorAll('[data-unit]').length > 0")
                time.sleep(0.3)                       # fonts and the first paint settled
                if fit:                               # no empty page below the board
                    height = browser.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
                    set_viewport(browser, {**viewport, "height": min(height, fit)})
                    time.sleep(0.2)
                browser.screenshot(str(ROOT / "docs" / name))
                print(f"docs/{name}")
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        subprocess.run([sys.executable, "demo.py", "--clean"], cwd=ROOT, env=env,
                       capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
