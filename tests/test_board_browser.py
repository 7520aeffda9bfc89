"""The live status board in headless Chromium against the real service."""

import json
import time

import pytest
import requests
from board_pages import BOARD_FILES, STATE, TILES, add_building, in_section, tile, wait_tile

from browser import Browser
from support import ROOT, Nginx

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def color_of(browser, unit):
    return browser.evaluate(f"getComputedStyle(document.querySelector('[data-unit=\"{unit}\"]')).backgroundColor")


@pytest.fixture
def browser():
    with Browser() as browser:
        yield browser


@pytest.fixture
def building(pg, upstream):
    """A project of 3 floors x 4 units, mostly available."""
    return add_building(pg, upstream)


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
    """A copy of the board hosted elsewhere (its four files) streams from `?api=`."""
    slug, _ = building
    service = start_service()
    for path, (name, content_type) in BOARD_FILES.items():
        upstream.set(path, (ROOT / name).read_bytes(), content_type=content_type)
    browser.goto(f"{upstream.url}/board.html?project={slug}&api={service.url}/ignored/path")
    assert browser.evaluate("location.origin") != service.url
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 12")   # the service's
    assert browser.evaluate(STATE) == "live"                # origin only: the path would be a 404
    assert browser.evaluate("document.getElementById('notice').hidden")


def test_several_projects_each_under_its_name(start_service, browser, pg, upstream):
    """`/?project=a,b`: a section per project, its own legend and counts, an unknown one
    among them said so without holding the others back."""
    tower, _ = add_building(pg, upstream, "tower")
    low, low_statuses = add_building(pg, upstream, "low", floors=(1, 2), per_floor=3,
                                     special={"103": "closed"})
    service = start_service()
    browser.goto(f"{service.url}/?project={tower},no-such-project,{low},{tower}")
    assert browser.wait_for(f"{STATE} === 'live'")
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 18")
    browser.wait_for(f"{in_section('no-such-project', '')}.dataset.state === 'unknown'", timeout=10)
    sections = json.loads(browser.evaluate("""JSON.stringify([...document.querySelectorAll('section[data-project]')]
        .map(s => [s.dataset.project, s.querySelector('h2').textContent, s.dataset.state,
                   s.querySelectorAll('[data-unit]').length,
                   s.querySelector('[data-legend=available]').textContent,
                   s.querySelector('[data-legend=sold]').textContent]))"""))
    assert sections == [
        [tower, tower, "live", 12, "available 8", "sold 1"],
        ["no-such-project", "no-such-project", "unknown", 0, "available 0", "sold 0"],
        [low, low, "live", 6, "available 5", "sold 1"],
    ]
    note = browser.evaluate(f"{in_section('no-such-project', '.note')}.textContent")
    assert "no-such-project" in note and "no such project" in note
    for part in ("[role=grid]", ".legend"):                 # its empty grid and legend not shown
        assert browser.evaluate(f"getComputedStyle({in_section('no-such-project', part)}).display") == "none"
    assert browser.evaluate(f"{in_section(tower, '.note')}.hidden")
    assert tower in browser.evaluate("document.title") and low in browser.evaluate("document.title")
    assert json.loads(browser.evaluate("JSON.stringify(Object.keys(window.board.projects))")) == [
        tower, "no-such-project", low]

    upstream.set_statuses(f"/{low}", {**low_statuses, "101": "held"})   # one project moves
    wait_tile(browser, "101", "reserved", slug=low)
    assert browser.evaluate(f"{in_section(low, '[data-legend=reserved]')}.textContent") == "reserved 1"
    assert browser.evaluate(f"{tile('101', tower)}.dataset.status") == "available"
    assert browser.evaluate(f"{in_section(tower, '[data-legend=reserved]')}.textContent") == "reserved 1"
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
    wait_tile(browser, unit, status, timeout=timeout)


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
