// The browser page's script for the API key test (bundled by esbuild in
// browser.test.mjs): against a server with a keys file, on loopback without
// TLS (a browser trusts no private CA), it
//   1. streams observations with the key sent as the subprotocol
//      `bearer.<key>` (the browser's WebSocket cannot set headers), recalls them;
//   2. tries a wrong key as subprotocol: the server refuses the upgrade (401),
//      which a browser reports only as a failed connection;
//   3. tries a wrong key in `init` (apiKeyTransport: "init"): UnauthenticatedError;
// and sets window.__auth for the test.
import { EngramWebSocketClient } from "../../dist/index.js";

const q = new URLSearchParams(location.search);
const url = q.get("ws");
const space = q.get("space");
const key = q.get("key");
const wrong = q.get("wrong");
const dim = Number(q.get("dim"));
const n = Number(q.get("n") || 20);
const $ = (id) => document.getElementById(id);

const vector = (seed) => Array.from({ length: dim }, (_, i) => ((seed * 31 + i * 17) % 97) / 97 + 0.01);
const describe = (e) => ({ name: e?.name ?? String(e), kind: e?.kind, code: e?.code, httpStatus: e?.httpStatus, message: String(e?.message ?? e) });

async function main() {
  document.querySelector("table")?.remove(); // the results table belongs to the other page
  const out = { nativeWebSocket: typeof WebSocket === "function" };
  // 1. The right key, as the subprotocol.
  const protocols = [];
  class Recording extends WebSocket {
    constructor(u, p) {
      super(u, p);
      protocols.push(this);
    }
  }
  const client = new EngramWebSocketClient(url, { space, apiKey: key, WebSocket: Recording });
  let accepted = 0;
  for await (const r of client.observeMany(Array.from({ length: n }, (_, i) => ({ id: `auth-${i}`, embedding: vector(i) })))) {
    if (r.status === "accepted") accepted += 1;
  }
  const r = await client.recall({ embedding: vector(3), max_results: 1 });
  out.accepted = accepted;
  out.topHit = r.memories[0]?.episode.id;
  out.selectedProtocol = protocols[0]?.protocol;
  out.closed = await client.close();
  $("progress").textContent = `with the key: ${accepted} / ${n} accepted, recall top hit ${out.topHit}, subprotocol ${out.selectedProtocol}`;

  // 2. A wrong key as the subprotocol: refused before the upgrade; the browser hides the 401.
  const bad = new EngramWebSocketClient(url, { space, apiKey: wrong, reconnect: false, connectTimeoutMs: 3000 });
  out.wrongSubprotocol = await bad.connect().then(() => ({ name: "connected" }), describe);
  // 3. A wrong key in init: the server's error message says unauthenticated.
  const badInit = new EngramWebSocketClient(url, { space, apiKey: wrong, apiKeyTransport: "init", connectTimeoutMs: 3000 });
  out.wrongInit = await badInit.connect().then(() => ({ name: "connected" }), describe);
  // 4. No key at all.
  const none = new EngramWebSocketClient(url, { space, connectTimeoutMs: 3000 });
  out.noKey = await none.connect().then(() => ({ name: "connected" }), describe);
  // tls options cannot apply in a browser.
  try {
    new EngramWebSocketClient(url.replace(/^ws:/, "wss:"), { space, tls: { ca: "PEM" } });
    out.tlsInBrowser = "accepted";
  } catch (e) {
    out.tlsInBrowser = describe(e);
  }
  $("recall").textContent = `wrong key (subprotocol): ${out.wrongSubprotocol.kind}; wrong key (init): ${out.wrongInit.kind}; no key: ${out.noKey.kind}`;
  document.body.dataset.done = "true";
  window.__auth = out;
}

main().catch((e) => {
  $("progress").textContent = `FAILED: ${e && e.stack ? e.stack : e}`;
  window.__auth = { error: String(e && e.stack ? e.stack : e) };
});
