"""public-status.js shares one connection per browser (SPEC, "One connection per browser"),
in headless Chromium against the real service, directly and through the README's nginx.

Chromium keeps six HTTP/1.1 connections per host across all its tabs, and a stream never
ends: eight tabs of streams of their own leave two stuck at "connecting" (the first test
shows it here). With the sharing client, one tab holds one multiplexed stream for every
tab and relays it; the service sees one stream (`public_status_open_streams`).

The test page is served by the client API's origin (an embedding site's), loads the
client from the service as such a site does, makes one `PublicStatus` per project of its
`?projects=` and keeps in `window.seen[slug]` what each saw (statuses, how many updates
and full ones, when the last came, its states)."""

import json
import time

import pytest
from board_pages import BOARD_FILES, tile

from browser import Browser
from support import ROOT, Nginx, metric, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tabs</title></head><body><script>
  const params = new URLSearchParams(location.search);
  const api = params.get("api");
  const options = {};
  for (const name of ["silence", "minDelay", "maxDelay"]) {
    if (params.has(name)) options[name] = Number(params.get(name));
  }
  if (params.get("share") === "false") options.share = false;
  window.marker = Math.random();     // survives a back/forward-cache restore, not a load
  window.seen = {};
  const script = document.createElement("script");
  script.src = `${api}/public-status.js`;
  script.onload = () => {
    window.lives = params.get("projects").split(",").map((slug) => {
      const seen = window.seen[slug] = { statuses: null, updates: 0, full: 0, at: 0, states: [] };
      return new PublicStatus(slug, { ...options, api,
        onupdate(statuses, changed, full) {
          seen.statuses = { ...statuses };
          seen.updates += 1;
          if (full) seen.full += 1;
          seen.at = Date.now() / 1000;
          tell();
        },
        onstate(state) { seen.states.push(state); tell(); },
      });
    });
  };
  // In a frame, tell the page around it (DevTools evaluates in the top frame).
  const tell = () => { if (parent !== window) parent.postMessage(JSON.stringify(seen), "*"); };
  document.head.append(script);
</script></body></html>"""

FRAMED = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>framed</title></head>
<body><script>
  window.told = null;
  addEventListener("message", (event) => { window.told = JSON.parse(event.data); });
  const frame = document.createElement("iframe");
  frame.sandbox = "allow-scripts";                   // an opaque origin: no Web Locks
  frame.src = "/tabs.html" + location.search;
  document.body.append(frame);
</script></body></html>"""

UNITS = {"A1": "open", "A2": "held", "A3": "closed"}
SHOWN = {"A1": "available", "A2": "reserved", "A3": "sold"}
NO_BROADCAST_CHANNEL = "delete window.BroadcastChannel;"


@pytest.fixture
def browser():
    with Browser() as browser:
        yield browser


@pytest.fixture
def projects(pg, upstream):
    """Five projects of three units, polled five times a second."""
    slugs = [pg.add_project(pg.unique_slug("tabs"), base_url=upstream.url, interval=0.2)
             for _ in range(5)]
    for slug in slugs:
        upstream.set_statuses(f"/{slug}", UNITS)
    upstream.set("/tabs.html", PAGE, content_type="text/html; charset=utf-8")
    upstream.set("/framed.html", FRAMED, content_type="text/html; charset=utf-8")
    upstream.set("/elsewhere.html", b"<!doctype html><title>elsewhere</title>",
                 content_type="text/html; charset=utf-8")
    return slugs


@pytest.fixture
def service(start_service):
    return start_service(REFRESH_MIN_INTERVAL="0")


@pytest.fixture(params=["direct", "nginx"])
def api(request, service):
    """Where the page's client connects: the service itself, or the README's nginx."""
    if request.param == "direct":
        yield service.url
        return
    proxy = Nginx(service.port)
    yield proxy.url
    proxy.stop()


# --------------------------------------------------------------------------- helpers


def page(upstream, api, projects, **options) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{upstream.url}/tabs.html?api={api}&projects={','.join(projects)}" + (f"&{query}" if query else "")


def open_tabs(browser, upstream, api, projects, init_script=None, **options) -> list:
    """One tab per project listed (the browser's first tab is the first)."""
    tabs = []
    for n, project in enumerate(projects):
        url = page(upstream, api, [project], **options)
        if n == 0 and init_script is None:
            browser.page.goto(url)
            tabs.append(browser.page)
        else:
            tabs.append(browser.new_tab(url, init_script=init_script))
    return tabs


def live(tab, timeout=10):
    """Wait until every instance of the tab is live with statuses; the tab."""
    tab.wait_for("window.lives && lives.every((l) => l.state === 'live' && seen[l.project].statuses)",
                 timeout)
    return tab


def seen(tab, project=None):
    return json.loads(tab.evaluate(f"JSON.stringify(seen[{json.dumps(project)} || lives[0].project])"))


def stats(tab):
    return json.loads(tab.evaluate("JSON.stringify(lives[0].stats)"))


def project_of(tab):
    return tab.evaluate("lives[0].project")


def leading(tabs):
    return [tab for tab in tabs if not tab.closed and tab.evaluate("lives[0].leading")]


def streams(service) -> int:
    return int(metric(service.url, "public_status_open_streams"))


def one_stream(service, timeout=5):
    """The service holds one stream (a reopened one is let go of promptly)."""
    wait_for(lambda: streams(service) == 1, timeout=timeout)


def change(upstream, slug, unit="A1", status="closed"):
    upstream.set_statuses(f"/{slug}", {**UNITS, unit: status})
    return time.time()


def shows(tab, unit, status, timeout=3):
    tab.wait_for(f"seen[lives[0].project].statuses?.{unit} === '{status}'", timeout)


# --------------------------------------------------------------------------- the cap


def test_without_sharing_eight_tabs_run_into_the_connection_cap(service, browser, upstream, projects):
    """What the sharing is for: eight tabs of streams of their own get six. The other two
    wait for a connection to the host, their stream's or even their script's."""
    tabs = open_tabs(browser, upstream, service.url, [projects[n % 5] for n in range(8)],
                     share="false")
    wait_for(lambda: streams(service) == 6, timeout=10)
    time.sleep(1)                                     # the other two stay waiting
    states = [tab.evaluate("window.lives ? lives[0].state : 'no script'") for tab in tabs]
    assert states.count("live") == 6, states
    assert set(states) - {"live"} <= {"connecting", "no script"}, states
    assert streams(service) == 6


def test_eight_tabs_on_five_projects_hold_one_stream(api, service, browser, upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, api, [projects[n % 5] for n in range(8)])]
    for tab in tabs:
        assert seen(tab)["statuses"] == SHOWN
    one_stream(service)
    assert len(leading(tabs)) == 1
    assert not any(tab.evaluate("lives[0].shared === false") for tab in tabs)

    before = {id(tab): seen(tab)["updates"] for tab in tabs}
    change(upstream, projects[1])
    change(upstream, projects[3], "A2", "open")
    for tab in tabs:
        project = project_of(tab)
        if project == projects[1]:
            shows(tab, "A1", "sold")
        elif project == projects[3]:
            shows(tab, "A2", "available")
    time.sleep(0.5)                                   # what else would have come, has
    for tab in tabs:
        changed = project_of(tab) in (projects[1], projects[3])
        assert seen(tab)["updates"] == before[id(tab)] + changed, project_of(tab)
    assert streams(service) == 1


def test_when_the_leader_and_others_close_a_change_reaches_every_other_tab_within_2_s(
        api, service, browser, upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, api, [projects[n % 5] for n in range(8)])]
    one_stream(service)
    [leader] = leading(tabs)
    others = [tab for tab in tabs if tab is not leader]
    closing = [leader, others[0], others[3]]
    remaining = [tab for tab in tabs if tab not in closing]
    full = {id(tab): seen(tab)["full"] for tab in remaining}
    resumed = {id(tab): stats(tab)["resumed"] for tab in remaining}

    for tab in closing:
        tab.close()
    closed_at = time.time()
    for slug in projects:                             # while the takeover goes on
        change(upstream, slug, "A3", "open")
    for tab in remaining:
        shows(tab, "A3", "available", timeout=2.5)
    arrivals = [seen(tab)["at"] - closed_at for tab in remaining]
    assert max(arrivals) < 2.0, arrivals
    assert len(leading(remaining)) == 1
    one_stream(service)
    for tab in remaining:                             # resumed: no snapshot came again
        assert seen(tab)["full"] == full[id(tab)]
        assert stats(tab)["resumed"] > resumed[id(tab)]
        assert seen(tab)["statuses"] == {**SHOWN, "A3": "available"}


def test_a_frozen_leader_hands_over_and_catches_up_when_thawed(service, browser, upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, service.url, projects[:3])]
    [leader] = leading(tabs)
    leader.freeze()                                   # a background tab, frozen
    frozen_at = time.time()
    for slug in projects[:3]:
        change(upstream, slug)
    others = [tab for tab in tabs if tab is not leader]
    for tab in others:
        shows(tab, "A1", "sold", timeout=2.5)
    assert max(seen(tab)["at"] for tab in others) - frozen_at < 2.0
    assert len(leading(others)) == 1
    one_stream(service)
    leader.unfreeze()
    shows(leader, "A1", "sold")                       # told what it missed by the new leader
    assert not leader.evaluate("lives[0].leading")
    assert streams(service) == 1


# --------------------------------------------------------------------------- reloads


def test_a_reload_resumes_from_session_storage_without_a_snapshot(service, browser, upstream, projects):
    [tab] = open_tabs(browser, upstream, service.url, projects[:1])
    live(tab)
    change(upstream, projects[0])
    shows(tab, "A1", "sold")
    tab.reload()
    tab.wait_for("window.lives && lives[0].state === 'live'")
    assert stats(tab) == {"opened": 1, "resumed": 1, "snapshots": 0, "updates": 0,
                          "stored": 1, "shared": 0}
    assert seen(tab)["statuses"] == {**SHOWN, "A1": "sold"}
    change(upstream, projects[0], "A2", "closed")     # and live from there
    shows(tab, "A2", "sold")
    assert stats(tab)["updates"] == 1 and stats(tab)["snapshots"] == 0


def test_a_reloaded_tab_is_served_by_the_leader(service, browser, upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, service.url, projects[:3])]
    follower = next(tab for tab in tabs if not tab.evaluate("lives[0].leading"))
    follower.reload()
    follower.wait_for("window.lives && lives[0].state === 'live' && lives[0].stats.shared")
    assert stats(follower)["snapshots"] == 0 and stats(follower)["opened"] == 0
    assert seen(follower)["statuses"] == SHOWN
    one_stream(service)


# --------------------------------------------------------------------------- coming and going


def test_a_crashed_tabs_projects_leave_the_stream(service, browser, upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, service.url, projects[:2])]
    [leader] = leading(tabs)
    [follower] = [tab for tab in tabs if tab is not leader]
    wait_for(lambda: metric(service.url, "public_status_watched_projects") == 2)
    follower.crash()                                  # no pagehide, no goodbye
    # Its tab lock goes with it; its project lingers 5 s (LINGER), then leaves.
    time.sleep(3)
    assert metric(service.url, "public_status_watched_projects") == 2
    wait_for(lambda: metric(service.url, "public_status_watched_projects") == 1, timeout=5)
    one_stream(service)
    change(upstream, project_of(leader))
    shows(leader, "A1", "sold")
    assert seen(leader)["full"] == 1                  # resumed on the shorter list


def test_a_page_of_seven_projects_and_an_unknown_one_holds_one_stream(service, browser, upstream,
                                                                       projects, pg):
    slugs = projects + [pg.add_project(pg.unique_slug("tabs"), base_url=upstream.url, interval=0.2)
                        for _ in range(2)]
    for slug in slugs[5:]:
        upstream.set_statuses(f"/{slug}", UNITS)
    browser.goto(page(upstream, service.url, [*slugs, "no-such-project", "Not-A-Slug"]))
    browser.wait_for("window.lives && lives.every((l) => l.state !== 'connecting')")
    states = json.loads(browser.evaluate("JSON.stringify(lives.map((l) => l.state))"))
    assert states == ["live"] * 7 + ["unknown", "unknown"]
    one_stream(service)
    # A tab of unknown projects only: the service's 404, told to this tab alone.
    tab = browser.new_tab(page(upstream, service.url, ["no-such-project", "nor-this-one"]))
    tab.wait_for("window.lives && lives.every((l) => l.state === 'unknown')")
    assert browser.evaluate("lives.slice(0, 7).every((l) => l.state === 'live')")
    one_stream(service)


def test_boards_in_three_tabs_hold_one_stream(service, browser, upstream, projects):
    """The board (a copy of its files hosted elsewhere, as the board's tests do) makes an
    instance per project and changed nothing for it: a board of three projects and two
    boards of one, five instances in three tabs, one stream."""
    for path, (name, content_type) in BOARD_FILES.items():
        upstream.set(path, (ROOT / name).read_bytes(), content_type=content_type)
    boards = [",".join(projects[:3]), projects[3], projects[0]]
    tabs = [browser.page] + [browser.new_tab() for _ in boards[1:]]
    for tab, shown in zip(tabs, boards, strict=True):
        tab.goto(f"{upstream.url}/board.html?project={shown}&api={service.url}")
    for tab, shown in zip(tabs, boards, strict=True):
        tab.wait_for(f"document.querySelectorAll('[data-unit]').length === {3 * len(shown.split(','))}")
        tab.wait_for("Object.values(window.board.projects).every((live) => live.state === 'live')")
    one_stream(service)
    change(upstream, projects[0])
    for tab in (tabs[0], tabs[2]):
        tab.wait_for(f"{tile('A1', projects[0])}?.dataset.status === 'sold'", timeout=3)


def test_without_broadcast_channel_each_instance_keeps_a_stream_of_its_own(service, browser,
                                                                            upstream, projects):
    tabs = [live(tab) for tab in open_tabs(browser, upstream, service.url, projects[:3],
                                           init_script=NO_BROADCAST_CHANNEL)]
    assert all(tab.evaluate("typeof BroadcastChannel === 'undefined' && !lives[0].shared")
               for tab in tabs)
    wait_for(lambda: streams(service) == 3)
    change(upstream, projects[1])
    shows(tabs[1], "A1", "sold")
    live(browser.new_tab(page(upstream, service.url, projects[3:4], share="false")))
    wait_for(lambda: streams(service) == 4)


def test_a_sandboxed_frame_keeps_a_stream_of_its_own(service, browser, upstream, projects):
    """A sandboxed frame's origin is opaque: every Web Lock it asks for is refused, so
    its instances fall back to a stream of their own rather than wait for a leader."""
    url = page(upstream, service.url, projects[:1]).replace("/tabs.html", "/framed.html")
    browser.goto(url)
    told = json.loads(browser.wait_for(f"window.told?.['{projects[0]}']?.statuses && JSON.stringify(told)"))
    assert told[projects[0]]["statuses"] == SHOWN and told[projects[0]]["states"][-1] == "live"
    wait_for(lambda: streams(service) == 1)
    change(upstream, projects[0])
    browser.wait_for(f"window.told['{projects[0]}'].statuses.A1 === 'sold'", timeout=3)


# --------------------------------------------------------------------------- the page's lifecycle


def test_coming_back_online_checks_the_stream_at_once(service, browser, upstream, projects):
    [tab] = open_tabs(browser, upstream, service.url, projects[:1], minDelay=60000)
    live(tab)
    tab.call("Network.enable")
    conditions = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    tab.call("Network.emulateNetworkConditions", offline=True, **conditions)
    tab.wait_for("!navigator.onLine")
    opened = stats(tab)["opened"]
    tab.call("Network.emulateNetworkConditions", offline=False, **conditions)
    tab.wait_for(f"lives[0].stats.opened === {opened + 1} && lives[0].stats.resumed === 1", timeout=1)
    assert stats(tab)["snapshots"] == 1 and tab.evaluate("lives[0].state") == "live"


def test_a_tab_visible_after_a_long_hidden_spell_checks_the_stream(service, browser, upstream,
                                                                    projects):
    [tab] = open_tabs(browser, upstream, service.url, projects[:1], silence=1500)
    live(tab)
    other = browser.new_tab()                         # in front: the first tab is hidden
    tab.wait_for("document.visibilityState === 'hidden'")
    time.sleep(0.5)
    tab.activate()                                    # a short spell: nothing to check
    tab.wait_for("document.visibilityState === 'visible'")
    assert stats(tab)["opened"] == 1
    other.activate()
    tab.wait_for("document.visibilityState === 'hidden'")
    time.sleep(2)                                     # longer than its silence limit
    tab.activate()
    tab.wait_for("lives[0].stats.opened === 2 && lives[0].stats.resumed === 1", timeout=1)
    assert stats(tab)["snapshots"] == 1 and tab.evaluate("lives[0].state") == "live"


def test_a_page_back_from_the_back_forward_cache_resumes(service, browser, upstream, projects):
    [tab] = open_tabs(browser, upstream, service.url, projects[:1])
    live(tab)
    marker = tab.evaluate("window.marker")
    tab.goto(f"{upstream.url}/elsewhere.html")
    tab.wait_for("document.title === 'elsewhere'")
    wait_for(lambda: streams(service) == 0)           # a page in the cache holds no stream
    change(upstream, projects[0])                     # while it is away
    tab.evaluate("history.back()")
    tab.wait_for(f"window.marker === {marker}")       # the same document, restored
    shows(tab, "A1", "sold")
    assert stats(tab)["opened"] == 2 and stats(tab)["resumed"] == 1
    assert stats(tab)["snapshots"] == 1               # the change came by resume
    one_stream(service)
