/*
 * public-status.js: live unit statuses of a public-status project, for any page.
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
 * It wraps the browser's EventSource, which reconnects by itself after a dropped
 * connection but gives up for good when a proxy answers an error while the service
 * restarts (nginx's 502, a router's 503). This client then asks, with a HEAD of the
 * stream, whether the project exists: 404 means it does not ("unknown"; nothing more is
 * tried); anything else means the service is unreachable for now, and it opens a new
 * stream after a back-off (doubling, capped, with jitter), resuming from the last event
 * id it saw, so that it gets only what it missed. It also reopens a stream that stayed
 * silent for longer than pings allow (a phone that changed networks keeps a dead
 * connection open), and at once when the browser says it is online again.
 */
(function (global) {
  "use strict";

  const script = document.currentScript;
  const SCRIPT_ORIGIN = script && script.src ? new URL(script.src, location.href).origin : "";

  class PublicStatus extends EventTarget {
    /**
     * project: the project's slug. options:
     *   api:        the service's origin (default: where this script came from)
     *   lastEventId the last id a page kept from an earlier visit, to resume from
     *   minDelay, maxDelay  back-off bounds in ms (default 1000, 30000)
     *   silence     ms without any message (pings included) after which the stream is
     *               reopened (default 75000: two and a half of the default ping interval)
     *   onupdate(statuses, changed, full), onstate(state)  callbacks; the same arrive
     *               as "update" and "state" events ({detail: ...}) on this object
     */
    constructor(project, options = {}) {
      super();
      this.project = project;
      this.api = (options.api || SCRIPT_ORIGIN || "").replace(/\/+$/, "");
      this.url = `${this.api}/api/public/${encodeURIComponent(project)}/status/stream`;
      this.statuses = {};
      this.lastEventId = options.lastEventId || "";
      this.state = "connecting";
      this.stats = { opened: 0, resumed: 0, snapshots: 0, updates: 0 };
      this._minDelay = options.minDelay || 1000;
      this._maxDelay = options.maxDelay || 30000;
      this._silence = options.silence || 75000;
      this._onupdate = options.onupdate;
      this._onstate = options.onstate;
      this._failures = 0;
      this._source = null;
      this._timer = null;
      this._watchdog = null;
      this._online = () => { if (this.state === "reconnecting") this._open(); };
      global.addEventListener("online", this._online);
      this._open();
    }

    /** Stop for good: no stream, no timer. */
    close() {
      this._stop();
      global.removeEventListener("online", this._online);
      this._setState("closed");
    }

    _open() {
      this._stop();
      const query = this.lastEventId ? `?lastEventId=${encodeURIComponent(this.lastEventId)}` : "";
      const source = new EventSource(this.url + query);
      this._source = source;
      this.stats.opened += 1;
      const on = (event, handle) => source.addEventListener(event, (message) => {
        this._heard();
        handle(message);
      });
      on("connected", (message) => {
        const data = JSON.parse(message.data);
        if (data.resumed) this.stats.resumed += 1;
        this._failures = 0;
        this._setState("live");
      });
      on("status_update", (message) => {
        this.lastEventId = message.lastEventId;
        this.statuses = JSON.parse(message.data).statuses;
        this.stats.snapshots += 1;
        this._update(this.statuses, true);
      });
      on("bulk_update", (message) => {
        this.lastEventId = message.lastEventId;
        const changed = JSON.parse(message.data).updates;
        Object.assign(this.statuses, changed);
        this.stats.updates += 1;
        this._update(changed, false);
      });
      on("ping", () => {});
      source.addEventListener("error", () => {
        if (source !== this._source) return;
        if (source.readyState === EventSource.CONNECTING) {
          this._setState("reconnecting");       // the browser retries by itself
        } else {
          this._gaveUp();                       // it will not: find out why
        }
      });
      this._heard();
    }

    async _gaveUp() {
      this._stop();
      this._setState("reconnecting");
      let unknown = false;
      try {
        const answer = await fetch(this.url, { method: "HEAD", cache: "no-store" });
        // The service's own 404 is JSON; a proxy's error page is not its word.
        unknown = answer.status === 404 && /json/.test(answer.headers.get("Content-Type") || "");
      } catch (error) {
        unknown = false;                        // unreachable, or a proxy's page without CORS
      }
      if (this.state === "closed") return;
      if (unknown) {
        this._setState("unknown");
        return;
      }
      this._failures += 1;
      const ceiling = Math.min(this._maxDelay, this._minDelay * 2 ** (this._failures - 1));
      this._timer = setTimeout(() => this._open(), ceiling / 2 + Math.random() * ceiling / 2);
    }

    _heard() {
      clearTimeout(this._watchdog);
      this._watchdog = setTimeout(() => this._gaveUp(), this._silence);
    }

    _stop() {
      clearTimeout(this._timer);
      clearTimeout(this._watchdog);
      if (this._source) this._source.close();
      this._source = null;
    }

    _update(changed, full) {
      if (this._onupdate) this._onupdate(this.statuses, changed, full);
      this.dispatchEvent(new CustomEvent("update", { detail: { statuses: this.statuses, changed, full } }));
    }

    _setState(state) {
      if (state === this.state) return;
      this.state = state;
      if (this._onstate) this._onstate(state);
      this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
    }
  }

  global.PublicStatus = PublicStatus;
})(window);
