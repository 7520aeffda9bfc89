"""The board for everyone (issue 23), in headless Chromium against the real service:
axe-core finds nothing at WCAG 2.1 AA on a desktop and a phone, before and after a change;
every status has its own mark; each unit names itself; changes are told in a polite live
region, grouped and seldom; the highlight keeps still for those who ask; and the board
and its legend are reached and used with a keyboard alone."""

from __future__ import annotations

import json

import pytest
from board_pages import (
    DESKTOP,
    PHONE,
    STATE,
    STATUSES,
    add_building,
    axe_violations,
    focused,
    grid_names,
    in_section,
    press,
    set_media,
    set_viewport,
    settle,
    tile,
    wait_tile,
)

from browser import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# What the live region says, each time it changes: (ms since the page began, its text).
WATCH_LIVE = """document.addEventListener('DOMContentLoaded', () => {
    window.spoken = [];
    const live = document.getElementById('live');
    new MutationObserver(() => window.spoken.push([performance.now(),
        document.getElementById('updated').textContent, document.getElementById('changes').textContent]))
        .observe(live, {subtree: true, childList: true, characterData: true});
});"""

# Per status, of a tile's mark and of the legend's: [its mask image, its width in CSS px,
# whether it is drawn in the text's colour].
MARKS = """(statuses) => Object.fromEntries(statuses.map(status => {
    const mark = (e) => { const s = getComputedStyle(e, '::before');
                          return [s.maskImage, parseFloat(s.width), s.backgroundColor === getComputedStyle(e).color]; };
    return [status, {tile: mark(document.querySelector(`.unit[data-status=${status}]`)),
                     legend: mark(document.querySelector(`[data-legend=${status}] .swatch`))}];
}))"""


@pytest.fixture
def browser():
    with Browser() as browser:
        browser.call("Page.enable")
        browser.call("Emulation.setFocusEmulationEnabled", enabled=True)
        yield browser


@pytest.fixture
def building(pg, upstream):
    return add_building(pg, upstream)


def open_board(browser, url: str, units: int) -> None:
    browser.goto(url)
    assert browser.wait_for(f"{STATE} === 'live'")
    browser.wait_for(f"document.querySelectorAll('[data-unit]').length === {units}")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("several", [False, True], ids=["one-project", "several-projects"])
def test_axe_finds_nothing_at_wcag_21_aa(start_service, browser, pg, upstream, viewport, several):
    slug, statuses = add_building(pg, upstream)
    service = start_service()
    set_viewport(browser, viewport)
    if several:
        other, _ = add_building(pg, upstream, floors=(1, 2), per_floor=3, special={"103": "closed"})
        open_board(browser, f"{service.url}/?project={slug},{other},no-such-project", 18)
        browser.wait_for(f"{in_section('no-such-project', '')}.dataset.state === 'unknown'")
    else:
        open_board(browser, f"{service.url}/?project={slug}", 12)
    settle(browser)
    assert axe_violations(browser) == []

    upstream.set_statuses(f"/{slug}", {**statuses, "101": "held", "304": "closed"})
    wait_tile(browser, "304", "sold", slug=slug)
    wait_tile(browser, "101", "reserved", slug=slug)
    settle(browser)
    assert axe_violations(browser) == []

    browser.evaluate(f"{in_section(slug, '[data-legend=sold]')}.click()")   # "show only sold"
    assert browser.evaluate(f"{in_section(slug, '[role=grid]')}.dataset.only") == "sold"
    settle(browser)
    assert axe_violations(browser) == []


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_status_has_its_own_mark_on_its_tiles_and_in_the_legend(start_service, browser,
                                                                      building, viewport):
    slug, _ = building
    service = start_service()
    set_viewport(browser, viewport)
    open_board(browser, f"{service.url}/?project={slug}", 12)
    marks = json.loads(browser.evaluate(f"JSON.stringify(({MARKS})({json.dumps(STATUSES)}))"))
    images = {status: found["tile"][0] for status, found in marks.items()}
    assert all(image.startswith('url("data:image/svg+xml') for image in images.values()), images
    assert len(set(images.values())) == len(STATUSES)                 # five shapes, not one
    for status, found in marks.items():
        assert found["legend"][0] == found["tile"][0], status        # the legend's is the tile's
        assert found["tile"][1] >= 12 and found["legend"][1] >= 12    # readable on a phone too
        assert found["tile"][2], status                               # drawn in the text's colour


def test_each_unit_names_itself_and_the_news_is_in_a_polite_live_region(start_service, browser,
                                                                        building, upstream):
    slug, statuses = building
    service = start_service()
    open_board(browser, f"{service.url}/?project={slug}", 12)
    names = grid_names(browser)
    assert names["203"] == "Unit 203, floor 2: sold"
    assert names["102"] == "Unit 102, floor 1: reserved"
    assert names["301"] == "Unit 301, floor 3: hidden"
    assert len(names) == 12 and all(name.startswith(f"Unit {unit}, floor ") for unit, name in names.items())

    nodes = browser.call("Accessibility.getFullAXTree")["nodes"]
    [region] = [node for node in nodes if node.get("role", {}).get("value") == "status"]
    properties = {p["name"]: p["value"].get("value") for p in region.get("properties", [])}
    assert properties.get("live") == "polite"
    assert browser.evaluate("['connection', 'updated', 'changes'].every(id => document.getElementById('live').contains(document.getElementById(id)))")
    assert browser.evaluate("document.documentElement.lang") == "en"
    assert slug in browser.evaluate("document.title")

    upstream.set_statuses(f"/{slug}", {**statuses, "203": "open"})
    wait_tile(browser, "203", "available")
    assert grid_names(browser)["203"] == "Unit 203, floor 2: available"


def test_changes_are_told_grouped_and_at_most_every_five_seconds(start_service, browser,
                                                                 building, upstream):
    slug, statuses = building
    service = start_service()
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_LIVE)
    open_board(browser, f"{service.url}/?project={slug}", 12)
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "closed"})
    wait_tile(browser, "101", "sold")
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "closed", "102": "closed", "103": "held"})
    wait_tile(browser, "103", "reserved")
    assert json.loads(browser.evaluate("JSON.stringify(window.board.live.stats)"))["updates"] >= 2

    told = browser.wait_for("window.spoken.filter(([, , changes]) => changes).length >= 1 && window.spoken",
                            timeout=8)
    said = [[at, updated, changes] for at, updated, changes in told]
    first_update = next(at for at, updated, _ in said if updated.startswith("last update"))
    [news] = [(at, changes) for at, _, changes in said if changes]
    assert news[1] == "3 units changed: 101 sold, 102 sold, 103 reserved."   # one, for three tiles
    assert news[0] - first_update >= 4900                                    # not before 5 s


def test_the_highlight_keeps_still_for_those_who_ask(start_service, browser, building, upstream):
    slug, statuses = building
    service = start_service()
    open_board(browser, f"{service.url}/?project={slug}", 12)
    highlighted = (f"{tile('101')}.classList.contains('changed') && "
                   f"JSON.stringify([{tile('101')}.getAnimations().length, getComputedStyle({tile('101')}).boxShadow])")

    upstream.set_statuses(f"/{slug}", {**statuses, "101": "held"})
    moving, _ = json.loads(browser.wait_for(highlighted))
    assert moving >= 1                                   # a ring that fades

    settle(browser)
    set_media(browser, prefers_reduced_motion="reduce")
    upstream.set_statuses(f"/{slug}", {**statuses, "101": "closed"})
    wait_tile(browser, "101", "sold")
    still, ring = json.loads(browser.wait_for(highlighted))
    assert still == 0 and ring != "none"                 # marked, and nothing moves


def test_a_keyboard_reaches_the_legend_and_walks_the_board(start_service, browser, building):
    slug, _ = building
    service = start_service()
    open_board(browser, f"{service.url}/?project={slug}", 12)
    press(browser, "Tab")
    assert focused(browser) == "a.skip"
    press(browser, "Enter")                              # skip the header
    assert focused(browser) == "main#units"
    reached = []
    for _ in range(6):
        press(browser, "Tab")
        reached.append(focused(browser))
    assert reached == [f"legend {status}" for status in STATUSES] + ["unit 301"]   # one stop for the units

    walk = {"ArrowRight": "unit 302", "ArrowDown": "unit 202", "End": "unit 204",
            "ArrowLeft": "unit 203", "Home": "unit 201", "ArrowUp": "unit 301"}
    for key, expected in walk.items():
        press(browser, key)
        assert focused(browser) == expected, key
    press(browser, "ArrowDown")
    press(browser, "Tab", shift=True)                    # back to the legend, from where it was
    assert focused(browser) == "legend hidden"
    press(browser, "Enter")
    assert browser.evaluate("document.querySelector('[data-legend=hidden]').getAttribute('aria-pressed')") == "true"
    assert browser.evaluate("document.querySelector('[role=grid]').dataset.only") == "hidden"
    press(browser, " ")
    assert browser.evaluate("document.querySelector('[data-legend=hidden]').getAttribute('aria-pressed')") == "false"
    press(browser, "Tab")
    assert focused(browser) == "unit 201"                # the grid remembers its place


def test_a_unit_keeps_its_place_and_the_focus_through_a_full_snapshot(start_service, browser,
                                                                      building, upstream):
    """A new unit makes the board redraw itself: the focused unit stays focused."""
    slug, statuses = building
    service = start_service()
    open_board(browser, f"{service.url}/?project={slug}", 12)
    browser.evaluate(f"{tile('202')}.focus()")
    upstream.set_statuses(f"/{slug}", {**statuses, "105": "open"})
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 13")
    assert focused(browser) == "unit 202"
    assert browser.evaluate("document.querySelectorAll('[role=grid] [tabindex=\"0\"]').length") == 1


def test_up_and_down_follow_the_lines_on_screen_when_a_floor_wraps(start_service, browser, pg,
                                                                   upstream):
    """On a phone a floor of 6 wraps to 4 + 2 tiles: Down goes to the line below as seen."""
    slug, _ = add_building(pg, upstream, per_floor=6, special={})
    service = start_service()
    set_viewport(browser, PHONE)
    open_board(browser, f"{service.url}/?project={slug}", 18)
    assert browser.evaluate(f"{tile('305')}.getBoundingClientRect().top > {tile('304')}.getBoundingClientRect().top")
    browser.evaluate(f"{tile('304')}.focus()")
    for key, expected in (("ArrowDown", "unit 306"), ("ArrowDown", "unit 202"), ("ArrowUp", "unit 306"),
                          ("ArrowUp", "unit 302"), ("ArrowUp", "unit 302")):
        press(browser, key)
        assert focused(browser) == expected, key
