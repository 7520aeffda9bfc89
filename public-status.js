/*
 * public-status.js: live unit statuses of public-status projects, for any page.
 * No dependencies, no build step. Served by the service itself at /public-status.js.
 *
 *   <script src="https://status.example.com/public-status.js"></script>
 *   <script>
 *     const live = new PublicStatus("harbour-view", {
 *       onupdate(statuses, changed) { ... },   // every unit / the units that changed
 *       onstate(state) { ... },                // "connecting", "live", "reconnecting", "unknown"
 *     });
 *   </script>
 *
 * One connection per browser. A browser keeps at most six HTTP/1.1 connections per host
 * across all its tabs, and a stream never ends: seven tabs of streams of their own would
 * leave one stuck at "connecting". So every instance, in any number of tabs of one origin,
 * shares one connection to a service: one tab, the leader (whoever holds a Web Lock),
 * holds one multiplexed stream (/api/public/status/stream?projects=a,b) for every project
 * any tab watches, and relays its messages to the other tabs over a BroadcastChannel.
 * Every tab keeps what the stream said (statuses, and the stream's last id), so a new
 * instance is served at once, and when the leader tab goes (closed, navigated away,
 * frozen, crashed) the next tab in the lock's queue takes over and resumes from the last
 * id: a project that did not change gets nothing. Each tab holds a lock of its own for
 * as long as it lives, and the leader waits for those locks: when it gets one, that tab is
 * gone, and its projects leave the stream a few seconds later (LINGER: a reload finds its
 * projects still there). Where Web Locks or BroadcastChannel are missing (Web Locks need
 * a secure context: https, or localhost), or with {share: false}, an instance keeps a
 * single-project stream of its own (/api/public/<slug>/status/stream) as before.
 *
 * Either way a stream is an EventSource, which reconnects by itself after a dropped
 * connection but gives up for good when a proxy answers an error while the service
 * restarts (nginx's 502, a router's 503). This client then asks, with a HEAD of the
 * stream, whether the projects exist: the service's own 404 means they do not
 * ("unknown"; nothing more is tried); anything else means the service is unreachable for
 * now, and it opens a new stream after a back-off (doubling, capped, with jitter),
 * resuming from the last event id it saw, so that it gets only what it missed. It also
 * reopens a stream that stayed silent for longer than pings allow (a phone that changed
 * networks keeps a dead connection open), and checks the stream at once (a reopen that
 * resumes) when the browser comes back online, when a page comes back from the
 * back/forward cache, and when a tab becomes visible after a hidden spell longer than
 * that silence. A reload resumes from what the tab kept in sessionStorage (the last id
 * and the statuses), so it downloads only what changed.
 */
(function (global) {
  "use strict";

  const script = document.currentScript;
  const SCRIPT_ORIGIN = script && script.src ? new URL(script.src, location.href).origin : "";
  const SLUG = /^[a-z0-9][a-z0-9-]{0,127}$/;   // any other slug is a 404 on the service
  const MAX_PROJECTS = 20;   // projects per multiplexed stream: the service's default cap
  const LINGER = 5000;       // ms a project nobody watches stays on the stream
  const CHECK_EVERY = 1000;  // ms: a check reopens a stream at most this often
  const canShare = typeof BroadcastChannel === "function" &&
    !!(global.navigator && navigator.locks && typeof navigator.locks.request === "function");

  const newId = () => Math.random().toString(36).slice(2) + Date.now().toString(36);
  const same = (a, b) => a.length === b.length && a.every((item, n) => item === b[n]);

  const storage = {
    load(key) {
      try { return JSON.parse(global.sessionStorage.getItem(key)) || null; } catch (error) { return null; }
    },
    save(key, value) {
      try { global.sessionStorage.setItem(key, JSON.stringify(value)); } catch (error) { /* full, or off */ }
    },
  };

  // ------------------------------------------------------------------ the page's lifecycle
  // Everything that holds a stream or a share of one follows the page: suspend() when it
  // is hidden for good or frozen (pagehide, freeze: a page in the back/forward cache or a
  // frozen tab holds no lock, no channel, no stream), wake() when it comes back,
  // check() when the stream may be dead (online; visible after a long hidden spell),
  // save() when it may not come back (hidden).

  const members = new Set();   // {silence, save(), suspend(), wake(), check()}
  let hiddenAt = 0;
  const each = (method) => { for (const member of [...members]) member[method](); };
  global.addEventListener("pagehide", () => { each("save"); each("suspend"); });
  document.addEventListener("freeze", () => { each("save"); each("suspend"); });
  global.addEventListener("pageshow", (event) => { if (event.persisted) each("wake"); });
  document.addEventListener("resume", () => each("wake"));
  global.addEventListener("online", () => each("check"));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") {
      hiddenAt = Date.now();
      each("save");
      return;
    }
    const away = hiddenAt ? Date.now() - hiddenAt : 0;
    hiddenAt = 0;
    for (const member of [...members]) if (away > member.silence) member.check();
  });

  // ------------------------------------------------------------------ one stream

  /**
   * One EventSource kept open on `url`: reopened after the browser gave up (back-off) or
   * after a silence, resuming from `id`, the last event id it saw. It tells `handlers`
   * what came: open(), connected(data), status(data), bulk(data), lost() (reconnecting),
   * unknown() (the service's 404: stopped for good), refused() (its 400: the list).
   */
  class Connection {
    constructor(url, options, handlers) {
      this.url = url;
      this.id = "";
      this.handlers = handlers;
      this._minDelay = options.minDelay || 1000;
      this._maxDelay = options.maxDelay || 30000;
      this._silence = options.silence || 75000;
      this._failures = 0;
      this._source = null;
      this._timer = null;
      this._watchdog = null;
      this._checkedAt = 0;
      this._run = 0;          // which open() an answer that comes late belongs to
      this.ended = false;     // unknown or closed: nothing more is tried
    }

    open() {
      this._stop();
      const run = this._run;
      const query = this.id ? `${this.url.includes("?") ? "&" : "?"}lastEventId=${encodeURIComponent(this.id)}` : "";
      const source = new EventSource(this.url + query);
      this._source = source;
      const on = (event, handle) => source.addEventListener(event, (message) => {
        if (run !== this._run) return;
        this._heard();
        handle(message);
      });
      on("connected", (message) => {
        this._failures = 0;
        this.handlers.connected(JSON.parse(message.data));
      });
      on("status_update", (message) => {
        this.id = message.lastEventId;
        this.handlers.status(JSON.parse(message.data));
      });
      on("bulk_update", (message) => {
        this.id = message.lastEventId;
        this.handlers.bulk(JSON.parse(message.data));
      });
      on("ping", () => {});
      source.addEventListener("error", () => {
        if (run !== this._run) return;
        if (source.readyState === EventSource.CONNECTING) {
          this.handlers.lost();                 // the browser retries by itself
        } else {
          this._gaveUp();                       // it will not: find out why
        }
      });
      this._heard();
      this.handlers.open();
    }

    /** The stream may be dead (the network changed, the page slept): reopen it now. */
    check() {
      if (this.ended || Date.now() - this._checkedAt < CHECK_EVERY) return;
      this._checkedAt = Date.now();
      this.open();
    }

    /** No stream, no timer, until open(). */
    pause() {
      this._stop();
    }

    close() {
      this._stop();
      this.ended = true;
    }

    async _gaveUp() {
      this._stop();
      const run = this._run;
      this.handlers.lost();
      let answer = null;
      try {
        const reply = await fetch(this.url, { method: "HEAD", cache: "no-store" });
        // The service's own 404 and 400 are JSON; a proxy's error page is not its word.
        if (/json/.test(reply.headers.get("Content-Type") || "")) answer = reply.status;
      } catch (error) {
        answer = null;                          // unreachable, or a proxy's page without CORS
      }
      if (run !== this._run || this.ended) return;
      if (answer === 404) {
        this.ended = true;
        this.handlers.unknown();
        return;
      }
      if (answer === 400 && this.handlers.refused()) return;
      this._failures += 1;
      const ceiling = Math.min(this._maxDelay, this._minDelay * 2 ** (this._failures - 1));
      this._timer = setTimeout(() => this.open(), ceiling / 2 + Math.random() * ceiling / 2);
    }

    _heard() {
      clearTimeout(this._watchdog);
      const run = this._run;
      this._watchdog = setTimeout(() => { if (run === this._run) this._gaveUp(); }, this._silence);
    }

    _stop() {
      this._run += 1;
      clearTimeout(this._timer);
      clearTimeout(this._watchdog);
      if (this._source) this._source.close();
      this._source = null;
    }
  }

  // ------------------------------------------------------------------ a stream of its own

  /** An instance's single-project stream ({share: false}, or nothing to share with). */
  class OwnStream {
    constructor(instance, options) {
      this.instance = instance;
      this.silence = options.silence || 75000;
      this.key = `public-status:${instance.api || location.origin}:${instance.project}`;
      this._suspended = false;
      const connection = new Connection(instance.url, options, {
        open: () => { instance.stats.opened += 1; },
        connected: (data) => {
          if (data.resumed) instance.stats.resumed += 1;
          instance._setState("live");
        },
        status: (data) => {
          instance.lastEventId = connection.id;
          instance._full(data.statuses, "snapshots");
        },
        bulk: (data) => {
          instance.lastEventId = connection.id;
          instance._change(data.updates);
        },
        lost: () => instance._setState("reconnecting"),
        unknown: () => instance._setState("unknown"),
        refused: () => false,
      });
      this.connection = connection;
      const kept = storage.load(this.key);
      if (kept && kept.id && kept.statuses) {   // a reload: resume where this tab was
        connection.id = kept.id;
        instance.lastEventId = kept.id;
        queueMicrotask(() => instance._full(kept.statuses, "stored"));
      } else {
        connection.id = instance.lastEventId;
      }
      members.add(this);
      connection.open();
    }

    save() {
      if (this.connection.id && !this.connection.ended) {
        storage.save(this.key, { id: this.connection.id, statuses: this.instance.statuses });
      }
    }

    suspend() {
      this._suspended = true;
      this.connection.pause();
    }

    wake() {
      if (!this._suspended || this.connection.ended) return;
      this._suspended = false;
      this.connection.open();
    }

    check() {
      if (!this._suspended) this.connection.check();
    }

    close() {
      members.delete(this);
      this.connection.close();
    }
  }

  // ------------------------------------------------------------------ one connection per browser

  const hubs = new Map();   // service origin -> this page's Hub for it

  /**
   * This page's share of the browser's connection to one service. Every tab's Hub keeps
   * the same picture of the shared connection, from the leader's messages:
   *   statuses  project -> its units' statuses, as last known
   *   fresh     the projects whose statuses are at the position their stream's id names
   *             (only those may be resumed, and only those are served to a new instance)
   *   streams   key -> {projects: as opened, named: those its id names, id}
   *   states    project -> "live" | "reconnecting" | "unknown"
   *   roster    other tab -> {projects it watches, gone: when it went (0: alive)}
   * The leader's messages on the channel (and applied in its own tab the same way):
   *   opened {key, projects}, connected {key, projects, unknown, resumed},
   *   status {key, project, statuses, id}, bulk {key, project, updates, id},
   *   lost {key, projects}, unknown {key, projects}, closed {key}, sync {to, ...the picture},
   *   rollcall;
   * every tab's: here {from, projects, want (a sync)}, bye {from}, check.
   */
  class Hub {
    static of(api, options) {
      if (!hubs.has(api)) hubs.set(api, new Hub(api, options));
      return hubs.get(api);
    }

    constructor(api, options) {
      this.api = api;
      this.name = `public-status ${api}`;
      this.key = `public-status:${api}`;
      this.silence = options.silence || 75000;
      this._options = options;
      this.instances = new Set();
      this.statuses = {};
      this.fresh = new Set();
      this.streams = new Map();
      this.states = {};
      this.roster = new Map();
      this.synced = false;      // holds the leader's picture (a sync, or leading)
      this.connections = null;  // key -> Connection, while this tab leads
      this._left = new Map();   // project this page stopped watching -> when
      this._perStream = MAX_PROJECTS;
      this._count = 0;
      this._pending = false;
      this._soonPending = false;
      this._lingerTimer = null;
      this._restore();
      members.add(this);
      this._start();
    }

    // ---- instances

    join(instance) {
      this.instances.add(instance);
      if (this.connections) this._askAgain([instance.project]);
      queueMicrotask(() => this._serve(instance, this.synced ? "shared" : "stored"));
      if (this._suspended) this.wake();
      else this._changed();
    }

    leave(instance) {
      this.instances.delete(instance);
      if (!this._projects().includes(instance.project)) this._left.set(instance.project, Date.now());
      if (!this.instances.size) this.suspend();
      else this._changed();
    }

    _projects() {
      return [...new Set([...this.instances].map((instance) => instance.project))];
    }

    _of(project) {
      return [...this.instances].filter((instance) => instance.project === project);
    }

    /** An instance gets what this tab holds of its project, if that is current. */
    _serve(instance, kind) {
      if (!this.instances.has(instance)) return;
      const project = instance.project;
      const state = this.states[project];
      if (state === "unknown") {
        instance._setState("unknown");
      } else if (this.fresh.has(project) && this.statuses[project] && this._carried(project)) {
        instance.lastEventId = this._idOf(project);
        instance._full(this.statuses[project], kind);
        if (state) instance._setState(state);
      }
    }

    _carried(project) {
      for (const stream of this.streams.values()) if (stream.projects.includes(project)) return true;
      return false;
    }

    _idOf(project) {
      for (const stream of this.streams.values()) if (stream.named.includes(project)) return stream.id;
      return "";
    }

    /** This page's projects changed: tell the others, in one message for a batch. */
    _changed() {
      if (this._pending) return;
      this._pending = true;
      queueMicrotask(() => {
        this._pending = false;
        if (this._suspended) return;
        this._announce(!this.synced);
        if (this.connections) this._reconcile();
      });
    }

    // ---- the page's lifecycle

    _start() {
      this.tab = newId();
      this._suspended = false;
      this._holding = false;    // the tab's lock: no other tab hears of this one before
      this.channel = new BroadcastChannel(this.name);
      this.channel.onmessage = (event) => this._receive(event.data);
      this._quit = new AbortController();
      const signal = this._quit.signal;
      const held = () => new Promise((resolve) => signal.addEventListener("abort", resolve));
      // A refusal other than our own abort (an opaque origin: a sandboxed frame) means
      // no sharing here: every instance takes a stream of its own.
      const refused = (error) => { if (error.name !== "AbortError") this._unshared(); };
      // The tab's own lock: held while it lives; the leader waits for it to learn it went.
      navigator.locks.request(`${this.name} tab ${this.tab}`, { signal }, () => {
        this._holding = true;
        this._announce(!this.synced);
        return held();
      }).catch(refused);
      navigator.locks.request(`${this.name} leader`, { signal }, () => {
        this._lead(signal);
        return held();
      }).catch(refused);
    }

    _unshared() {
      if (hubs.get(this.api) !== this) return;
      hubs.delete(this.api);
      members.delete(this);
      this.suspend();
      for (const instance of [...this.instances]) instance._alone();
      this.instances.clear();
    }

    suspend() {
      if (this._suspended) return;
      this._suspended = true;
      this._post({ type: "bye", from: this.tab });
      this._stopLeading();
      this._quit.abort();       // releases both locks, or withdraws the waiting request
      this.channel.close();
      this.synced = false;
    }

    wake() {
      if (!this._suspended || !this.instances.size) return;
      this._start();            // a new tab id: the old one's lock was let go
    }

    check() {
      if (this._suspended) return;
      if (this.connections) this._check();
      else this._post({ type: "check" });
    }

    _check() {
      for (const connection of this.connections.values()) connection.check();
    }

    save() {
      const fresh = [...this.fresh].filter((project) => this.statuses[project]);
      if (!fresh.length) return;
      storage.save(this.key, {
        streams: [...this.streams].map(([key, stream]) => [key, { named: stream.named, id: stream.id }]),
        statuses: Object.fromEntries(fresh.map((project) => [project, this.statuses[project]])),
        fresh,
      });
    }

    _restore() {
      const kept = storage.load(this.key);
      if (!kept || !Array.isArray(kept.streams) || !kept.statuses) return;
      for (const [key, stream] of kept.streams) {
        this.streams.set(key, { projects: stream.named, named: stream.named, id: stream.id });
      }
      this.statuses = kept.statuses;
      this.fresh = new Set(kept.fresh);
    }

    // ---- the channel

    _post(message) {
      if (!this._suspended) this.channel.postMessage(message);
    }

    /** What this tab's leader says: applied here, and told to the other tabs. */
    _send(message) {
      this._apply(message);
      this._post(message);
    }

    _announce(want) {
      if (this._holding) this._post({ type: "here", from: this.tab, projects: this._projects(), want });
    }

    _receive(message) {
      switch (message.type) {
        case "here":
          this.roster.set(message.from, { projects: message.projects, gone: 0 });
          if (this.connections) {
            this._watch(message.from);
            if (message.want) this._askAgain(message.projects);
            if (message.want) this._post(this._picture(message.from));
            this._soon();
          }
          break;
        case "bye":
          this._gone(message.from);
          break;
        case "rollcall":
          this._announce(!this.synced);
          break;
        case "check":
          if (this.connections) this._check();
          break;
        case "sync":
          if (message.to === this.tab) this._sync(message);
          break;
        default:
          this._apply(message);
      }
    }

    _gone(tab) {
      const entry = this.roster.get(tab);
      if (!entry || entry.gone) return;
      entry.gone = Date.now();
      if (this.connections) this._soon();
    }

    _picture(to) {
      return {
        type: "sync", to,
        statuses: this.statuses, fresh: [...this.fresh], states: this.states,
        streams: [...this.streams], roster: [...this.roster, [this.tab, { projects: this._projects(), gone: 0 }]],
      };
    }

    _sync(message) {
      this.statuses = message.statuses;
      this.fresh = new Set(message.fresh);
      this.states = message.states;
      this.streams = new Map(message.streams);
      for (const [tab, entry] of message.roster) if (tab !== this.tab) this.roster.set(tab, entry);
      this.synced = true;
      for (const instance of [...this.instances]) this._serve(instance, "shared");
    }

    /** One of the leader's stream messages, in every tab alike. */
    _apply(message) {
      const stream = this.streams.get(message.key);
      switch (message.type) {
        case "opened": {
          if (stream) {
            for (const project of stream.projects) {
              if (!message.projects.includes(project)) delete this.states[project];
            }
            stream.projects = message.projects;
            stream.opening = true;
          } else {
            this.streams.set(message.key, { projects: message.projects, named: [], id: "", opening: true });
          }
          for (const project of message.projects) {
            for (const instance of this._of(project)) instance.stats.opened += 1;
          }
          break;
        }
        case "connected": {
          if (stream) stream.projects = stream.projects.filter((p) => !message.unknown.includes(p));
          for (const project of message.projects) {
            if (!message.resumed[project]) this.fresh.delete(project);   // a snapshot follows
            this.states[project] = "live";
            for (const instance of this._of(project)) {
              if (message.resumed[project]) instance.stats.resumed += 1;
              instance._setState("live");
            }
          }
          this._unknown(message.unknown);
          break;
        }
        case "status":
        case "bulk": {
          if (stream) {
            if (stream.opening) {   // the first id of a new list: it names that list only
              for (const project of stream.named) {
                if (!stream.projects.includes(project)) this.fresh.delete(project);
              }
              stream.named = stream.projects;
              stream.opening = false;
            }
            stream.id = message.id;
          }
          const project = message.project;
          if (message.type === "status") {
            this.statuses[project] = message.statuses;
            this.fresh.add(project);
            this.states[project] = "live";
            for (const instance of this._of(project)) {
              instance.lastEventId = message.id;
              instance._full(message.statuses, "snapshots");
              instance._setState("live");
            }
          } else if (this.fresh.has(project)) {   // else a sync or a snapshot is on its way
            Object.assign(this.statuses[project], message.updates);
            for (const instance of this._of(project)) {
              instance.lastEventId = message.id;
              instance._change(message.updates);
            }
          }
          break;
        }
        case "lost":
          for (const project of message.projects) {
            if (this.states[project] === "unknown") continue;
            this.states[project] = "reconnecting";
            for (const instance of this._of(project)) instance._setState("reconnecting");
          }
          break;
        case "unknown":
          if (stream) stream.projects = [];
          this._unknown(message.projects);
          break;
        case "closed":
          if (stream) for (const project of stream.projects) delete this.states[project];
          this.streams.delete(message.key);
          break;
        case "rollcall":
          break;
      }
    }

    /** A page loaded now names a project found unknown before: ask the service again,
     * as a reload of a page with a stream of its own would. */
    _askAgain(projects) {
      for (const project of projects) if (this.states[project] === "unknown") delete this.states[project];
    }

    _unknown(projects) {
      for (const project of projects) {
        this.states[project] = "unknown";
        this.fresh.delete(project);
        for (const instance of this._of(project)) instance._setState("unknown");
      }
    }

    // ---- leading: this tab holds the connections

    _lead(signal) {
      if (signal.aborted) return;
      this.connections = new Map();
      this.synced = true;
      this._watching = signal;
      this._watched = new Set();
      for (const tab of this.roster.keys()) this._watch(tab);
      this._send({ type: "rollcall" });
      this._soon();
    }

    _stopLeading() {
      if (!this.connections) return;
      for (const connection of this.connections.values()) connection.close();
      this.connections = null;
      clearTimeout(this._lingerTimer);
    }

    /** Wait for another tab's lock: granted when that tab is gone (closed, crashed...). */
    _watch(tab) {
      if (this._watched.has(tab)) return;
      this._watched.add(tab);
      navigator.locks.request(`${this.name} tab ${tab}`, { signal: this._watching }, () => {
        if (!this.connections) return;
        this._post({ type: "bye", from: tab });
        this._gone(tab);
      }).catch(() => {});       // aborted: this tab leads no more
    }

    /** Reconcile once for all that this task brought. Not on a timer: the leader is
     * often a background tab, whose timers the browser runs once a second at most. */
    _soon() {
      if (this._soonPending) return;
      this._soonPending = true;
      queueMicrotask(() => {
        this._soonPending = false;
        this._reconcile();
      });
    }

    /** The projects any tab watches, and those left less than LINGER ago. */
    _wanted() {
      const now = Date.now();
      const wanted = new Set(this._projects());
      let next = Infinity;
      const linger = (since) => {
        next = Math.min(next, since + LINGER);
        return now - since < LINGER;
      };
      for (const [project, since] of this._left) {
        if (linger(since)) wanted.add(project);
        else this._left.delete(project);
      }
      for (const [tab, entry] of this.roster) {
        if (entry.gone && !linger(entry.gone)) {
          this.roster.delete(tab);
          continue;
        }
        for (const project of entry.projects) wanted.add(project);
      }
      for (const project of [...wanted]) if (this.states[project] === "unknown") wanted.delete(project);
      clearTimeout(this._lingerTimer);
      if (next < Infinity) this._lingerTimer = setTimeout(() => this._reconcile(), next - now + 10);
      return wanted;
    }

    /** Streams for the wanted projects: each project stays where it is, the new ones go
     * where there is room, and only a stream whose list changed is reopened. */
    _reconcile() {
      if (!this.connections) return;
      const wanted = this._wanted();
      const lists = new Map();
      const placed = new Set();
      for (const [key, stream] of this.streams) {
        const list = stream.projects.filter((p) => wanted.has(p) && !placed.has(p)).slice(0, this._perStream);
        list.forEach((project) => placed.add(project));
        lists.set(key, list);
      }
      for (const project of wanted) {
        if (placed.has(project)) continue;
        let key = [...lists.keys()].find((k) => lists.get(k).length < this._perStream);
        if (key === undefined) {
          key = `${this.tab}-${++this._count}`;
          lists.set(key, []);
        }
        lists.get(key).push(project);
      }
      for (const [key, projects] of lists) {
        const connection = this.connections.get(key);
        if (!projects.length) {
          if (connection) connection.close();
          this.connections.delete(key);
          this._send({ type: "closed", key });
        } else if (!connection || connection.ended || !same(connection.projects, projects)) {
          this._connect(key, projects);
        }
      }
    }

    _connect(key, projects) {
      let connection = this.connections.get(key);
      if (!connection || connection.ended) {
        connection = new Connection("", this._options, this._handlers(key));
        this.connections.set(key, connection);
      }
      // Resume only where this tab holds every project the id names and the list keeps.
      const stream = this.streams.get(key);
      const resumable = stream && stream.named.every((p) => !projects.includes(p) || this.fresh.has(p));
      connection.id = resumable ? stream.id : "";
      connection.projects = projects;
      connection.url = `${this.api}/api/public/status/stream?projects=${projects.map(encodeURIComponent).join(",")}`;
      connection.open();
    }

    _handlers(key) {
      const connection = () => this.connections && this.connections.get(key);
      return {
        open: () => this._send({ type: "opened", key, projects: connection().projects }),
        connected: (data) => {
          const unknown = data.unknown || [];
          connection().projects = connection().projects.filter((p) => !unknown.includes(p));
          this._send({ type: "connected", key, projects: data.projects || [], unknown,
                       resumed: data.resumed || {} });
        },
        status: (data) => this._send({ type: "status", key, project: data.project,
                                       statuses: data.statuses, id: connection().id }),
        bulk: (data) => this._send({ type: "bulk", key, project: data.project,
                                     updates: data.updates, id: connection().id }),
        lost: () => this._send({ type: "lost", key, projects: connection().projects }),
        unknown: () => {
          this._send({ type: "unknown", key, projects: connection().projects });
          this._reconcile();
        },
        refused: () => {   // a service whose cap is lower than ours: halve the lists
          if (this._perStream <= 1) return false;
          this._perStream = Math.max(1, Math.ceil(connection().projects.length / 2));
          connection().close();
          this._reconcile();
          return true;
        },
      };
    }
  }

  // ------------------------------------------------------------------ the public class

  class PublicStatus extends EventTarget {
    /**
     * project: the project's slug. options:
     *   api:        the service's origin (default: where this script came from)
     *   share       false: a stream of this instance's own, not the browser's shared one
     *   lastEventId the last id a page kept from an earlier visit, to resume a stream of
     *               its own from (a shared one resumes from what the tab kept itself)
     *   minDelay, maxDelay  back-off bounds in ms (default 1000, 30000)
     *   silence     ms without any message (pings included) after which the stream is
     *               reopened (default 75000: two and a half of the default ping interval)
     *   onupdate(statuses, changed, full), onstate(state)  callbacks; the same arrive
     *               as "update" and "state" events ({detail: ...}) on this object
     * stats: streams opened for it, resumed, snapshots and updates received, and
     * statuses it got without a download: stored (sessionStorage), shared (another tab).
     */
    constructor(project, options = {}) {
      super();
      this.project = project;
      this.api = (options.api || SCRIPT_ORIGIN || "").replace(/\/+$/, "");
      this.url = `${this.api}/api/public/${encodeURIComponent(project)}/status/stream`;
      this.statuses = {};
      this.lastEventId = options.lastEventId || "";
      this.state = "connecting";
      this.stats = { opened: 0, resumed: 0, snapshots: 0, updates: 0, stored: 0, shared: 0 };
      this.shared = options.share !== false && canShare;
      this._options = options;
      this._onupdate = options.onupdate;
      this._onstate = options.onstate;
      if (!SLUG.test(project)) {
        this.shared = false;
        queueMicrotask(() => this._setState("unknown"));
      } else if (this.shared) {
        this._hub = Hub.of(this.api || location.origin, options);
        this._hub.join(this);
      } else {
        this._own = new OwnStream(this, options);
      }
    }

    /** Nothing to share with after all: a stream of its own. */
    _alone() {
      this.shared = false;
      this._hub = null;
      if (this.state !== "closed") this._own = new OwnStream(this, this._options);
    }

    /** Whether this tab holds the browser's shared connection (false: another tab does,
     * or this instance has a stream of its own). */
    get leading() {
      return !!(this._hub && this._hub.connections);
    }

    /** Stop for good: this instance leaves the connection (or closes its own). */
    close() {
      if (this.state === "closed") return;
      if (this._hub) this._hub.leave(this);
      if (this._own) this._own.close();
      this._setState("closed");
    }

    _full(statuses, kind) {
      if (this.state === "closed") return;
      this.statuses = { ...statuses };
      this.stats[kind] += 1;
      this._update(this.statuses, true);
    }

    _change(updates) {
      if (this.state === "closed") return;
      Object.assign(this.statuses, updates);
      this.stats.updates += 1;
      this._update(updates, false);
    }

    _update(changed, full) {
      if (this._onupdate) this._onupdate(this.statuses, changed, full);
      this.dispatchEvent(new CustomEvent("update", { detail: { statuses: this.statuses, changed, full } }));
    }

    _setState(state) {
      if (state === this.state || this.state === "closed") return;
      this.state = state;
      if (this._onstate) this._onstate(state);
      this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
    }
  }

  global.PublicStatus = PublicStatus;
})(window);
