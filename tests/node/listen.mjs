// Listen to a public-status stream with the npm `eventsource` package; print each event
// as one JSON line, with the time (ms) it arrived. `identity` as second argument asks
// for an uncompressed stream (Node's fetch asks for gzip otherwise).
import { EventSource } from "eventsource";

const [url, encoding] = process.argv.slice(2);
const options = encoding === "identity"
  ? { fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, "Accept-Encoding": "identity" } }) }
  : {};
const source = new EventSource(url, options);
for (const event of ["connected", "status_update", "bulk_update", "ping"]) {
  source.addEventListener(event, (message) => {
    console.log(JSON.stringify({ event, at: performance.timeOrigin + performance.now(), id: message.lastEventId, data: message.data }));
  });
}
source.onerror = () => console.log(JSON.stringify({ event: "error", at: performance.timeOrigin + performance.now() }));
