"""The live status board in headless Chromium against the real service."""

import json
import time
from pathlib import Path

import pytest
import requests

from browser import Browser
from support import Nginx

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

BOARD = (Path(__file__).resolve().parent.parent / "board.html").read_bytes()
TILES = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-unit]')].map(e => [e.dataset.unit, e.dataset.status])))"
STATE = "document.getElementById('connection').dataset.state"


def color_of(browser, unit):
    return browser.evaluate(f"getComputedStyle(document.querySelector('[data-unit=\"{unit}\"]')).backgroundColor")


@pytest.fixture
def browser():
    with Browser() as browser:
        yield browser


@pytest.fixture
def building(pg, upstream):
    """A project of 3 floors x 4 units, mostly available."""
    slug = pg.add_project(pg.unique_slug("board"), base_url=upstream.url, interval=0.2)
    statuses = {f"{floor}{unit:02d}": "open" for floor in (1, 2, 3) for unit in (1, 2, 3, 4)}
    statuses.update({"102": "held", "203": "closed", "304": "coming soon", "301": "disabled"})
    upstream.set_statuses(f"/{slug}", statuses)
    return slug, statuses


def test_the_board_shows_changes_and_survives_a_restart(start_service, browser, building, upstream):
    slug, statuses = building
    service = start_service()
    browser.goto(f"{service.url}/?project={slug}")
    assert browser.wait_for(f"{STATE} === 'live'")
    tiles = browser.wait_for(f"document.querySelectorAll('[data-unit]').length === 12 && {TILES}")
    assert tiles.count('"available"') == 8
    assert '"102":"reserved"' in tiles and '"203":"sold"' in tiles
    assert '"304":"unreleased"' in tiles and '"301":"hidden"' in tiles
    assert browser.evaluate("document.querySelector('[data-legend=available]').textContent") == "available 8"
    assert browser.evaluate("document.getElementById('updated').textContent").startswith("last update")

    available, sold = color_of(browser, "101"), color_of(browser, "203")
    assert available != sold
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "sold"})
    browser.wait_for("document.querySelector('[data-unit=\"101\"]').dataset.status === 'sold'", timeout=5)
    browser.wait_for(f"getComputedStyle(document.querySelector('[data-unit=\"101\"]')).backgroundColor === '{sold}'")

    port = service.port
    service.stop()
    assert browser.wait_for(f"{STATE} === 'reconnecting'", timeout=5)
    start_service(port=port)
    assert browser.wait_for(f"{STATE} === 'live'", timeout=10)
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "sold", "104": "held"})
    browser.wait_for("document.querySelector('[data-unit=\"104\"]').dataset.status === 'reserved'", timeout=5)
    assert browser.evaluate("document.querySelectorAll('[data-unit]').length") == 12


def test_the_board_works_from_another_origin(start_service, browser, building, upstream):
    slug, _ = building
    service = start_service()
    upstream.set("/board.html", BOARD, content_type="text/html; charset=utf-8")
    browser.goto(f"{upstream.url}/board.html?project={slug}&api={service.url}")
    assert browser.evaluate("location.origin") != service.url
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 12")
    assert browser.evaluate(STATE) == "live"


def test_an_unknown_project_says_so(start_service, browser):
    service = start_service()
    browser.goto(f"{service.url}/?project=no-such-project")
    assert browser.wait_for(f"{STATE} === 'unknown'", timeout=10)
    assert "no-such-project" in browser.evaluate("document.getElementById('message').textContent")


def test_without_a_project_the_board_says_how_to_pick_one(start_service, browser):
    service = start_service()
    browser.goto(f"{service.url}/")
    assert "?project=" in browser.wait_for("document.getElementById('message').textContent")


# --------------------------------------------------------------------------- behind nginx

LIVE = "window.board && window.board.live"
STATS = f"{LIVE} && JSON.stringify(window.board.live.stats)"


def tile_is(browser, unit, status, timeout=10):
    browser.wait_for(f"document.querySelector('[data-unit=\"{unit}\"]')?.dataset.status === '{status}'",
                     timeout=timeout)


@pytest.fixture
def behind_nginx(start_service, browser, building):
    """The board of `building`, live, through nginx (deploy/nginx.conf)."""
    slug, _ = building
    service = start_service()
    proxy = Nginx(service.port)
    browser.goto(f"{proxy.url}/?project={slug}")
    assert browser.wait_for(f"{STATE} === 'live'")
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 12")
    yield service, proxy
    proxy.stop()


def test_behind_nginx_the_board_lives_through_a_restart(behind_nginx, start_service, browser,
                                                         building, upstream):
    """The service stops for longer than `retry:`: nginx answers 502, on which the
    browser's EventSource gives up for good; the client reopens it after the restart."""
    service, _ = behind_nginx
    slug, statuses = building
    port = service.port
    service.stop()
    assert browser.wait_for(f"{STATE} === 'reconnecting'", timeout=5)
    time.sleep(1.5)                                   # several retries' worth of 502s
    assert "No live statuses" not in browser.evaluate("document.getElementById('message').textContent")
    assert browser.evaluate("document.querySelectorAll('[data-unit]').length") == 12
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "sold"})
    start_service(port=port)
    assert browser.wait_for(f"{STATE} === 'live'", timeout=20)
    tile_is(browser, "101", "sold")
    stats = json.loads(browser.evaluate(STATS))
    assert stats["opened"] >= 2                       # the client opened a new EventSource


def test_behind_nginx_a_change_made_while_away_comes_by_resume(behind_nginx, browser, building,
                                                                upstream):
    service, proxy = behind_nginx
    slug, statuses = building
    proxy.stop()                                      # the viewer's network is gone
    assert browser.wait_for(f"{STATE} === 'reconnecting'", timeout=5)
    upstream.set_statuses(f"/{slug}", {**statuses, "102": "closed", "103": "held"})
    answer = requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5)
    assert answer.status_code == 200                  # committed while the viewer is away
    proxy.start()
    tile_is(browser, "102", "sold")
    tile_is(browser, "103", "reserved")
    stats = json.loads(browser.evaluate(STATS))
    assert stats["resumed"] >= 1 and stats["snapshots"] == 1   # one bulk_update, no snapshot


def test_behind_nginx_an_unknown_project_says_so(start_service, browser):
    service = start_service()
    proxy = Nginx(service.port)
    try:
        browser.goto(f"{proxy.url}/?project=no-such-project")
        assert browser.wait_for(f"{STATE} === 'unknown'", timeout=10)
        assert "no-such-project" in browser.evaluate("document.getElementById('message').textContent")
    finally:
        proxy.stop()
