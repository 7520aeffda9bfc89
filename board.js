/*
 * board.js: the live status board (board.html), one section per project, each fed by
 * its own PublicStatus (public-status.js shares one connection between them).
 *
 * Written for everyone who looks at it, the way GOV.UK's status tags are: text and
 * shape first, colour as a help.
 * - A unit's status is told by a mark on its tile (board.css), the same as the legend's,
 *   and by its name to assistive technology: "Unit 1203, floor 12: sold".
 * - The connection state and the last update sit in a polite live region (#live). Changes
 *   are announced there grouped, at most once every ANNOUNCE_EVERY ms ("3 units changed:
 *   1203 sold, ..."), never once per tile: a busy launch day must not talk over a reader.
 * - Each project's units are one ARIA grid: one Tab stop, arrow keys move between units
 *   (Up and Down by what is on screen, so wrapped rows on a phone work as they look).
 *   The legend's entries are toggle buttons: "show only the available units".
 * - ?api= may only name an http(s) origin, used for the streams and for nothing else;
 *   any other value is ignored (the board uses its own origin) and the page says so.
 *   Scripts come from the board's own origin only (board.html's <script> tags).
 */
(() => {
  "use strict";
  const STATUSES = ["available", "reserved", "sold", "unreleased", "hidden"];
  const ANNOUNCE_EVERY = 5000;  // ms between two announcements of changes, at least
  const NAMED = 5;              // units named in one announcement; the rest are counted
  const HIGHLIGHT = 1500;       // ms a changed tile stays marked as changed

  const $ = (id) => document.getElementById(id);
  const naturally = new Intl.Collator(undefined, { numeric: true }).compare;
  // "1204" is unit 04 on floor 12; ids without two trailing digits share one row.
  const floorOf = (unit) => (/^(.+?)\d{2}$/.exec(unit) || [, ""])[1];

  function element(tag, className = "", text = "") {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text) made.textContent = text;
    return made;
  }
  const unseen = (text) => element("span", "visually-hidden", text);

  /** The origin named by ?api=, if it is an http(s) one; else the board's own (""). */
  function serviceOrigin(given) {
    if (!given) return { origin: "", ignored: false };
    try {
      const url = new URL(given);
      if (url.protocol === "http:" || url.protocol === "https:") return { origin: url.origin, ignored: false };
    } catch (error) {
      // not an absolute URL at all: ignored as below
    }
    return { origin: "", ignored: true };
  }

  // --------------------------------------------------------------------- one project

  class ProjectBoard {
    constructor(slug, index, page) {
      this.slug = slug;
      this.page = page;
      this.units = {};            // unit id -> status, as last shown
      this.tiles = new Map();     // unit id -> its element
      this.highlights = new Map();
      this.state = "connecting";
      this.active = null;         // the grid's one Tab stop

      const section = this.section = element("section", "project");
      section.dataset.project = slug;
      section.dataset.state = this.state;
      section.setAttribute("aria-labelledby", `project-${index}`);
      const heading = element("h2", page.single ? "visually-hidden" : "", slug);
      heading.id = `project-${index}`;

      this.legend = element("div", "legend");
      this.legend.setAttribute("role", "group");
      this.legend.setAttribute("aria-label", `Legend of ${slug}: show only one status`);
      this.counts = new Map();
      for (const status of STATUSES) {
        const button = element("button");
        button.type = "button";
        button.dataset.legend = status;
        button.setAttribute("aria-pressed", "false");
        const swatch = element("span", "swatch");
        swatch.dataset.status = status;
        const label = element("span", "", `${status} 0`);
        button.append(swatch, label);
        button.addEventListener("click", () => this.only(status));
        this.counts.set(status, label);
        this.legend.append(button);
      }

      this.note = element("p", "note");
      this.note.hidden = true;
      this.grid = element("div", "floors");
      this.grid.setAttribute("role", "grid");
      this.grid.setAttribute("aria-label", `Units of ${slug}`);
      this.grid.setAttribute("aria-readonly", "true");
      this.grid.setAttribute("aria-busy", "true");   // no rows yet
      this.grid.addEventListener("keydown", (event) => this.key(event));
      this.grid.addEventListener("focusin", (event) => {
        const tile = event.target.closest("[data-unit]");
        if (tile) this.activate(tile);
      });

      const head = element("div", "project-head");
      head.append(heading, this.legend);
      section.append(head, this.note, this.grid);
    }

    update(statuses, changed, full) {
      const before = this.units;
      this.units = { ...statuses };
      const moved = full ? changesBetween(before, this.units) : { ...changed };
      if (full || Object.keys(changed).some((unit) => !this.tiles.has(unit))) {
        this.render();
      } else {
        for (const [unit, status] of Object.entries(changed)) this.restate(this.tiles.get(unit), status);
      }
      const first = Object.keys(before).length === 0;
      if (!first) for (const unit of Object.keys(moved)) this.highlight(this.tiles.get(unit));
      this.count();
      this.page.heard(this.slug, first ? {} : moved);
    }

    setState(state) {
      this.state = state;
      this.section.dataset.state = state;
      const unknown = state === "unknown";
      this.note.hidden = !unknown;
      this.note.textContent = unknown ? `No live statuses for "${this.slug}": there is no such project.` : "";
      this.legend.hidden = this.grid.hidden = unknown;
      this.page.showState();
    }

    render() {
      const focused = this.grid.contains(document.activeElement);
      const kept = this.active && this.active.dataset.unit;
      this.tiles.clear();
      const floors = new Map();
      for (const unit of Object.keys(this.units).sort(naturally)) {
        const floor = floorOf(unit);
        if (!floors.has(floor)) floors.set(floor, []);
        floors.get(floor).push(this.tile(unit, floor, this.units[unit]));
      }
      const rows = [...floors.keys()].sort((a, b) => -naturally(a, b)).map((floor) => {
        const row = element("div", "floor");
        row.setAttribute("role", "row");
        const label = element("span", "floor-label");
        label.setAttribute("role", "rowheader");
        label.append(unseen(floor ? "Floor " : "Other units"), floor);
        row.append(label, ...floors.get(floor));
        return row;
      });
      this.grid.replaceChildren(...rows);
      this.grid.setAttribute("aria-busy", rows.length ? "false" : "true");
      this.active = null;
      const active = this.tiles.get(kept) || this.grid.querySelector("[data-unit]");
      if (active) this.activate(active, focused);
    }

    tile(unit, floor, status) {
      const tile = element("span", "unit");
      tile.setAttribute("role", "gridcell");
      tile.tabIndex = -1;
      tile.dataset.unit = unit;
      tile.dataset.floor = floor;
      tile.textContent = unit;
      this.restate(tile, status);
      this.tiles.set(unit, tile);
      return tile;
    }

    /** A tile's status: its data-status (colour and mark) and its name. */
    restate(tile, status) {
      tile.dataset.status = status;
      const { unit, floor } = tile.dataset;
      const name = `Unit ${unit}${floor ? `, floor ${floor}` : ""}: ${status}`;
      tile.setAttribute("aria-label", name);
      tile.title = name;
    }

    highlight(tile) {
      if (!tile) return;
      clearTimeout(this.highlights.get(tile));
      tile.classList.remove("changed");
      void tile.offsetWidth;                    // restart the highlight of a tile already lit
      tile.classList.add("changed");
      this.highlights.set(tile, setTimeout(() => {
        tile.classList.remove("changed");
        this.highlights.delete(tile);
      }, HIGHLIGHT));
    }

    count() {
      const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
      for (const status of Object.values(this.units)) counts[status] = (counts[status] || 0) + 1;
      for (const [status, label] of this.counts) label.textContent = `${status} ${counts[status]}`;
    }

    /** The legend's toggle: show only one status (pressed again: all of them). */
    only(status) {
      const on = this.grid.dataset.only !== status;
      for (const button of this.legend.querySelectorAll("button")) {
        button.setAttribute("aria-pressed", String(on && button.dataset.legend === status));
      }
      if (on) this.grid.dataset.only = status;
      else delete this.grid.dataset.only;
    }

    activate(tile, focus = false) {
      if (this.active && this.active !== tile) this.active.tabIndex = -1;
      this.active = tile;
      tile.tabIndex = 0;
      if (focus) tile.focus();
    }

    key(event) {
      const from = event.target.closest("[data-unit]");
      if (!from) return;
      const tiles = [...this.grid.querySelectorAll("[data-unit]")];
      const floor = [...from.parentElement.querySelectorAll("[data-unit]")];
      const at = tiles.indexOf(from);
      const to = {
        ArrowRight: () => tiles[at + 1],
        ArrowLeft: () => tiles[at - 1],
        ArrowDown: () => nextLine(tiles, from, 1),
        ArrowUp: () => nextLine(tiles, from, -1),
        Home: () => (event.ctrlKey ? tiles[0] : floor[0]),
        End: () => (event.ctrlKey ? tiles[tiles.length - 1] : floor[floor.length - 1]),
      }[event.key];
      if (!to) return;
      event.preventDefault();
      const target = to();
      if (target) this.activate(target, true);
    }
  }

  /** The tile on the nearest line of tiles above (-1) or below (1), closest across. */
  function nextLine(tiles, from, direction) {
    const here = from.getBoundingClientRect();
    const across = here.left + here.width / 2;
    const boxes = tiles.map((tile) => [tile, tile.getBoundingClientRect()])
      .map(([tile, box]) => ({ tile, down: (box.top - here.top) * direction,
                               distance: Math.abs(box.left + box.width / 2 - across) }))
      .filter(({ down }) => down > here.height / 2);
    if (!boxes.length) return null;
    const line = Math.min(...boxes.map(({ down }) => down));
    return boxes.filter(({ down }) => down < line + here.height / 2)
      .reduce((best, box) => (box.distance < best.distance ? box : best)).tile;
  }

  function changesBetween(before, after) {
    const changed = {};
    if (!Object.keys(before).length) return changed;
    for (const [unit, status] of Object.entries(after)) if (before[unit] !== status) changed[unit] = status;
    return changed;
  }

  // --------------------------------------------------------------------- the page

  class Page {
    constructor(slugs) {
      this.slugs = slugs;
      this.single = slugs.length === 1;
      this.boards = slugs.map((slug, index) => new ProjectBoard(slug, index, this));
      this.pending = new Map();   // slug -> Map(unit -> status) not yet announced
      this.announced = -Infinity;
      this.timer = null;
      this.updatedAt = null;
      $("board").replaceChildren(...this.boards.map((board) => board.section));
    }

    /** The page's one state: live when every known project is. */
    overall() {
      const known = this.boards.map((board) => board.state).filter((state) => state !== "unknown");
      if (!known.length) return "unknown";
      for (const state of ["reconnecting", "connecting"]) if (known.includes(state)) return state;
      return known.every((state) => state === "live") ? "live" : known[0];
    }

    showState() {
      const state = this.overall();
      const connection = $("connection");
      if (connection.dataset.state === state) return;
      connection.dataset.state = state;
      connection.textContent = state === "unknown" ? (this.single ? "no such project" : "no such projects") : state;
      $("changes").textContent = "";             // the region is read whole: no stale news
      const seen = this.boards.some((board) => Object.keys(board.units).length);
      $("message").textContent = {
        unknown: `No live statuses for ${this.slugs.map((slug) => `"${slug}"`).join(", ")}.`,
        reconnecting: seen
          ? "The service is out of reach; these are the last statuses seen. Reconnecting..."
          : "The service is out of reach. Reconnecting...",
      }[state] || "";
    }

    /** A project's update arrived: announce it now, or with the next announcement. */
    heard(slug, changed) {
      this.updatedAt = new Date();
      const units = this.pending.get(slug) || new Map();
      for (const [unit, status] of Object.entries(changed)) units.set(unit, status);
      if (units.size) this.pending.set(slug, units);
      if (this.timer !== null) return;
      const wait = this.announced + ANNOUNCE_EVERY - performance.now();
      if (wait <= 0) this.announce();
      else this.timer = setTimeout(() => this.announce(), wait);
    }

    announce() {
      this.timer = null;
      this.announced = performance.now();
      $("updated").textContent = `last update ${this.updatedAt.toLocaleTimeString()}`;
      const news = [...this.pending].map(([slug, units]) => (this.single ? "" : `${slug}: `) + summary(units));
      this.pending.clear();
      $("changes").textContent = news.length ? `${news.join(". ")}.` : "";
    }
  }

  /** "3 units changed: 1203 sold, 1204 reserved, 905 available" */
  function summary(units) {
    const sorted = [...units].sort(([a], [b]) => naturally(a, b));
    const named = sorted.slice(0, NAMED).map(([unit, status]) => `${unit} ${status}`).join(", ");
    const more = sorted.length > NAMED ? ` and ${sorted.length - NAMED} more` : "";
    return `${units.size} ${units.size === 1 ? "unit" : "units"} changed: ${named}${more}`;
  }

  // --------------------------------------------------------------------- start

  const params = new URLSearchParams(location.search);
  const slugs = [...new Set((params.get("project") || "").split(",").map((slug) => slug.trim()).filter(Boolean))];
  const api = serviceOrigin(params.get("api"));
  if (api.ignored) {
    $("notice").hidden = false;
    $("notice").textContent = "The api address in this link is not an http(s) origin, so it was ignored: "
      + "this board shows its own service's statuses.";
  }

  if (!slugs.length) {
    $("connection").dataset.state = "idle";
    $("connection").textContent = "idle";
    $("message").textContent = "Pick a project: add ?project=<slug> to the address (several: ?project=a,b).";
    return;
  }
  document.title = `${slugs.join(", ")}: live unit status`;
  if (slugs.length === 1) $("title").textContent = slugs[0];
  const page = new Page(slugs);

  function start() {
    page.boards.forEach((board) => board.setState("connecting"));
    const lives = page.boards.map((board) => new PublicStatus(board.slug, {
      api: api.origin,
      onupdate: (statuses, changed, full) => board.update(statuses, changed, full),
      onstate: (state) => board.setState(state),
    }));
    window.board = {
      live: lives[0],
      projects: Object.fromEntries(lives.map((live) => [live.project, live])),
    };
  }

  // The client is the service's own /public-status.js, from this page's origin; if it did
  // not load (the service restarting as the page came), ask again until it does.
  function load() {
    if (typeof PublicStatus === "function") {
      start();
      return;
    }
    page.boards.forEach((board) => board.setState("reconnecting"));
    const script = document.createElement("script");
    script.src = "/public-status.js";
    script.onload = () => setTimeout(load, typeof PublicStatus === "function" ? 0 : 3000);
    script.onerror = () => { script.remove(); setTimeout(load, 3000); };
    document.head.append(script);
  }
  load();
})();
