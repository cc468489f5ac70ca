// The browser page's script (bundled by esbuild in browser.test.mjs): connects
// to the engram server given in the query string, streams 1,000
// observations, recalls them, shows the results in the DOM and sets
// window.__result for the test.
import { EngramWebSocketClient } from "../../dist/index.js";

const q = new URLSearchParams(location.search);
const url = q.get("ws");
const space = q.get("space");
const dim = Number(q.get("dim"));
const n = Number(q.get("n") || 1000);
const $ = (id) => document.getElementById(id);

function vector(seed) {
  const v = [];
  let x = seed * 7919 + 17;
  for (let i = 0; i < dim; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    v.push(x / 2147483648 - 0.5);
  }
  return v;
}

async function main() {
  const started = performance.now();
  const client = new EngramWebSocketClient(url, { space });
  const statuses = [];
  client.on("status", (s) => statuses.push(s.state));
  const episodes = Array.from({ length: n }, (_, i) => ({ id: `browser-${i}`, what: `browser observation ${i}`, embedding: vector(i) }));
  let accepted = 0;
  let inOrder = true;
  let expected = 1;
  for await (const r of client.observeMany(episodes)) {
    if (r.status === "accepted") accepted += 1;
    if (r.sequence_number !== expected++) inOrder = false;
    if (accepted % 100 === 0) $("progress").textContent = `${accepted} / ${n} accepted`;
  }
  const streamMs = performance.now() - started;
  // Recall every 10th observation by its own embedding: the top hit must be itself.
  const rows = [];
  let recalled = 0;
  for (let i = 0; i < n; i += 10) {
    const r = await client.recall({ embedding: episodes[i].embedding, max_results: 3 });
    const top = r.memories[0];
    const ok = top?.episode.id === episodes[i].id;
    if (ok) recalled += 1;
    if (rows.length < 15) rows.push([episodes[i].id, top?.episode.id ?? "-", top ? top.similarity.toFixed(4) : "-", ok ? "✓" : "✗"]);
  }
  const batches = [];
  for await (const b of client.recallStream({ embedding: vector(0), max_results: 25 }, { batchSize: 10 })) batches.push(b.memories.length);
  const closed = await client.close();
  $("progress").textContent = `${accepted} / ${n} accepted in ${streamMs.toFixed(0)} ms, in order: ${inOrder}`;
  $("recall").textContent = `recalled ${recalled} / ${n / 10} sampled (top hit is itself); recallStream batches: ${batches.join(", ")}`;
  $("closed").textContent = `closed: ${JSON.stringify(closed)}`;
  const tbody = $("rows");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  document.body.dataset.done = "true";
  window.__result = { accepted, inOrder, recalled, sampled: n / 10, batches, closed, statuses, streamMs, userAgent: navigator.userAgent, nativeWebSocket: typeof WebSocket === "function" };
}

main().catch((e) => {
  $("progress").textContent = `FAILED: ${e && e.stack ? e.stack : e}`;
  window.__result = { error: String(e && e.stack ? e.stack : e) };
});
