// Streams 1,000 observations to engram over the WebSocket stream and recalls
// while streaming, with the TypeScript client (clients/typescript).
//
//   engram serve                                  # in one terminal
//   cd clients/typescript && npm ci && npm run example
//   npm run example -- ws://127.0.0.1:9090/v1/stream   # another server
//
// Default URL: ws://localhost:8080/v1/stream (or $ENGRAM_WS_URL). Creates a
// fresh space (REST PUT, 64 dimensions), streams, recalls every 100 acks
// (each recall must find the observation just acked: read-after-ack),
// checks the space's count, closes. Exits non-zero if anything is off.
import { EngramWebSocketClient, type Episode } from "engram-client";

const url = process.argv[2] ?? process.env.ENGRAM_WS_URL ?? "ws://localhost:8080/v1/stream";
const DIM = 64;
const N = 1000;
const space = `ts-example-${Date.now()}`;
const httpBase = url.replace(/^ws/, "http").replace(/\/v1\/stream\/?$/, "");

const problems: string[] = [];
const check = (ok: boolean, what: string): void => {
  if (!ok) {
    problems.push(what);
    console.error(`  PROBLEM: ${what}`);
  }
};

function embedding(seed: number): number[] {
  const v: number[] = [];
  let x = (seed + 1) * 2654435761;
  for (let i = 0; i < DIM; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    v.push(x / 2147483648 - 0.5);
  }
  return v;
}

async function main(): Promise<void> {
  const put = await fetch(`${httpBase}/v1/spaces/${space}`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ dimension: DIM }),
  });
  check(put.status === 201 || put.status === 200, `PUT ${httpBase}/v1/spaces/${space} gave ${put.status}`);
  console.log(`space ${space} (${DIM}-d) on ${httpBase}; streaming ${N} observations to ${url}`);

  const client = new EngramWebSocketClient(url, { space });
  client.on("status", (s) => console.log(`  status: ${s.state}${s.suggested_rate ? ` (suggested_rate ${s.suggested_rate}/s)` : ""}`));
  client.on("reconnecting", (e) => console.log(`  reconnecting (attempt ${e.attempt}, in ${e.delayMs.toFixed(0)} ms): ${e.error.message}`));
  client.on("reconnected", (e) => console.log(`  reconnected: resumed=${e.resumed} resent=${e.resent}`));

  const episodes: Episode[] = Array.from({ length: N }, (_, i) => ({
    id: `example-${i}`,
    what: `example observation ${i}`,
    embedding: embedding(i),
    tags: ["example", i % 2 === 0 ? "even" : "odd"],
    metadata: { index: String(i) },
  }));

  const t0 = performance.now();
  let accepted = 0;
  let expected = 1;
  const recalls: Array<Promise<void>> = [];
  for await (const r of client.observeMany(episodes)) {
    check(r.sequence_number === expected, `ack ${r.sequence_number} out of order (expected ${expected})`);
    expected += 1;
    if (r.status !== "accepted") {
      check(false, `observation ${r.sequence_number} rejected: ${r.reason} ${r.message}`);
      continue;
    }
    accepted += 1;
    if (accepted % 100 === 0) {
      // Recall while streaming: the observation just acked must be visible.
      const i = r.sequence_number - 1;
      const seen = accepted;
      const acked = performance.now();
      recalls.push(
        client.recall({ embedding: embedding(i), max_results: 3 }).then((res) => {
          const top = res.memories[0];
          console.log(
            `  after ${seen} acks: recall -> ${res.memories.length} memories, top ${top?.episode.id} ` +
              `(similarity ${top?.similarity.toFixed(3)}, indexed ${top?.indexed}), snapshot ${res.snapshot_sequence}, ` +
              `${(performance.now() - acked).toFixed(1)} ms`,
          );
          check(top?.episode.id === `example-${i}`, `recall after ack ${i + 1} did not return example-${i} first`);
        }),
      );
    }
  }
  await Promise.all(recalls);
  const secs = (performance.now() - t0) / 1000;
  console.log(`${accepted}/${N} accepted in ${secs.toFixed(2)} s (${(accepted / secs).toFixed(0)} obs/s)`);
  check(accepted === N, `${accepted} of ${N} accepted`);

  const summary = await client.close();
  console.log(`closed: final_sequence=${summary.final_sequence} accepted=${summary.accepted} rejected=${summary.rejected}`);
  check(summary.accepted === N, `closed summary says ${summary.accepted} accepted`);

  const described = (await (await fetch(`${httpBase}/v1/spaces/${space}`)).json()) as { count?: number };
  console.log(`space ${space}: count=${described.count}`);
  check(described.count === N, `the space holds ${described.count}, expected ${N}`);
}

main().then(
  () => {
    if (problems.length > 0) {
      console.error(`FAILED: ${problems.length} problem(s)`);
      process.exit(1);
    }
    console.log("OK");
  },
  (e: unknown) => {
    console.error("FAILED:", e);
    process.exit(1);
  },
);
