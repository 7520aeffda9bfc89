// One client of `make chaos` (scripts/chaos.py): the npm `eventsource` package on one
// stream, every event printed as a JSON line with its time (seconds, wall clock). It
// follows the package's own rules (retry:, Last-Event-ID, reconnect); where they give up
// for good (a non-200 answer) it opens a new EventSource after a second, as a page would.
import { EventSource } from "eventsource";

const [url] = process.argv.slice(2);
const now = () => (performance.timeOrigin + performance.now()) / 1000;
const say = (fields) => process.stdout.write(JSON.stringify({ t: now(), ...fields }) + "\n");

function open() {
  say({ event: "open" });
  const source = new EventSource(url);
  for (const event of ["connected", "status_update", "bulk_update"]) {
    source.addEventListener(event, (message) => say({ event, id: message.lastEventId, data: message.data }));
  }
  source.onerror = (error) => {
    const gaveUp = source.readyState === EventSource.CLOSED;
    say({ event: gaveUp && error.code ? "error" : "closed", status: error.code ?? null });
    if (gaveUp) {
      source.close();
      setTimeout(open, 1000);
    }
  };
}

process.on("SIGTERM", () => process.exit(0));
open();
