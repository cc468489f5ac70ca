#!/usr/bin/env node
// Throughput of engram-client over ONE WebSocket connection from Node:
// observations/s accepted (durable: --wal-sync always) at 384 dimensions,
// pipelined with observeMany. Starts its own server (ENGRAM_BIN, default
// target/ci/engram) on free ports with a temp data dir.
//
//   npm run build && node bench/ws_throughput.mjs [--n 50000] [--dim 384] [--in-flight 1024] [--runs 3] [--workers N]
//
// Writes bench-results/websocket-client-YYYY-MM-DD.json at the repo root.
// Target: >= 10,000 obs/s.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { EngramWebSocketClient } from "../dist/index.js";
import { EngramServer, engramBin, repoRoot } from "../test/helpers/server.mjs";

const { values } = parseArgs({
  options: {
    n: { type: "string", default: "50000" },
    dim: { type: "string", default: "384" },
    "in-flight": { type: "string", default: "1024" },
    runs: { type: "string", default: "3" },
    warmup: { type: "string", default: "2000" },
    "wal-sync": { type: "string", default: "always" },
    "queue-capacity": { type: "string", default: "1000000" },
    // The server's indexing workers (0: one per core, the server default).
    workers: { type: "string", default: "0" },
    // Analysis only: stop the server's indexer during the runs (fault
    // injection), to see the ingest path's cost without HNSW inserts.
    "pause-indexing": { type: "boolean", default: false },
    out: { type: "string" },
  },
});
const N = Number(values.n);
const DIM = Number(values.dim);
const IN_FLIGHT = Number(values["in-flight"]);
const RUNS = Number(values.runs);
const WARMUP = Number(values.warmup);
const TARGET = 10_000;

function f32Vector(seed) {
  const v = new Float32Array(DIM);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < DIM; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    v[i] = (x / 4294967296) * 2 - 1;
  }
  return Array.from(v); // f32 values, as a model's output would be
}

/** CPU seconds (user + system) the server process used so far (Linux /proc; 0 elsewhere). */
function serverCpu(srv) {
  try {
    const stat = readFileSync(`/proc/${srv.proc.pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (100/s)
  } catch {
    return 0;
  }
}

const server = await new EngramServer({
  walSync: values["wal-sync"],
  queueCapacity: Number(values["queue-capacity"]),
  faultInjection: values["pause-indexing"],
  extraArgs: ["--workers", values.workers],
}).start();
if (values["pause-indexing"]) {
  const st = await server.post("/v1/admin/indexing/pause");
  if (st !== 200) throw new Error(`POST /v1/admin/indexing/pause: ${st}`);
}
const results = [];
try {
  console.log(`engram ${engramBin()} on ${server.httpAddr}; ${N} observations x ${RUNS} runs, ${DIM}-d, in flight ${IN_FLIGHT}, wal-sync ${values["wal-sync"]}`);
  // Episodes made up front so the measurement is the client and the server, not the generator.
  const vectors = Array.from({ length: 4096 }, (_, i) => f32Vector(i + 1));
  const sampleBytes = JSON.stringify({ type: "observation", sequence_number: 1, episode: { id: "00000000-0000-4000-8000-000000000000", what: "bench observation 0", embedding: vectors[0] } }).length;
  for (let run = 0; run <= RUNS; run++) {
    const warm = run === 0;
    const count = warm ? WARMUP : N;
    const space = `bench-${run}`;
    await server.createSpace(space, DIM);
    const episodes = Array.from({ length: count }, (_, i) => ({ what: `bench observation ${i}`, embedding: vectors[i % vectors.length] }));
    const client = new EngramWebSocketClient(server.wsUrl, { space, maxInFlight: IN_FLIGHT, enableBackpressure: true });
    await client.connect();
    let accepted = 0;
    let other = 0;
    const cpu0 = process.cpuUsage();
    const srv0 = serverCpu(server);
    const t0 = performance.now();
    for await (const r of client.observeMany(episodes)) {
      if (r.status === "accepted") accepted += 1;
      else other += 1;
    }
    const secs = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const clientCpu = (cpu.user + cpu.system) / 1e6;
    const srvCpu = serverCpu(server) - srv0;
    const stats = client.stats;
    await client.close();
    const rate = accepted / secs;
    if (warm) {
      console.log(`warmup: ${accepted} accepted in ${secs.toFixed(2)} s (${rate.toFixed(0)}/s)`);
      continue;
    }
    const count2 = await server.spaceCount(space);
    console.log(
      `run ${run}: ${accepted} accepted, ${other} not, in ${secs.toFixed(2)} s = ${rate.toFixed(0)} obs/s ` +
        `(client CPU ${clientCpu.toFixed(2)} s = ${((clientCpu / secs) * 100).toFixed(0)}% of a core, server CPU ${srvCpu.toFixed(2)} s = ${((srvCpu / secs) * 100).toFixed(0)}%; retries ${stats.retries}, space count ${count2})`,
    );
    results.push({
      run,
      accepted,
      not_accepted: other,
      seconds: Number(secs.toFixed(4)),
      obs_per_sec: Math.round(rate),
      client_cpu_seconds: Number(clientCpu.toFixed(3)),
      client_cpu_us_per_obs: Math.round((clientCpu / accepted) * 1e6),
      server_cpu_seconds: Number(srvCpu.toFixed(3)),
      server_cpu_us_per_obs: Math.round((srvCpu / accepted) * 1e6),
      retries: stats.retries,
      space_count: count2,
    });
  }
  const rates = results.map((r) => r.obs_per_sec).sort((a, b) => a - b);
  const median = rates[Math.floor(rates.length / 2)];
  let commit = "unknown";
  let dirty = false;
  try {
    commit = execFileSync("git", ["rev-parse", "HEAD"], { cwd: repoRoot }).toString().trim();
    dirty = execFileSync("git", ["status", "--porcelain"], { cwd: repoRoot }).toString().trim() !== "";
  } catch {}
  const date = new Date().toISOString().slice(0, 10);
  const report = {
    command: `node bench/ws_throughput.mjs ${process.argv.slice(2).join(" ")}`.trim(),
    benchmark: "websocket-client throughput (engram-client, Node, one WebSocket, pipelined observeMany)",
    date: new Date().toISOString(),
    git_commit: commit,
    git_dirty: dirty,
    machine: {
      cpus: os.cpus().length,
      cpu_model: os.cpus()[0]?.model ?? "unknown",
      memory_gib: Math.round(os.totalmem() / 2 ** 30),
      platform: `${os.platform()} ${os.release()}`,
      node: process.version,
      note: "client and server share this machine's cores",
    },
    parameters: {
      observations_per_run: N,
      runs: RUNS,
      warmup_observations: WARMUP,
      dimension: DIM,
      max_in_flight: IN_FLIGHT,
      wal_sync: values["wal-sync"],
      indexing_paused: values["pause-indexing"],
      bufferutil: await import("bufferutil").then(() => true, () => false),
      queue_capacity: Number(values["queue-capacity"]),
      server_workers: Number(values.workers),
      message_bytes_approx: sampleBytes,
      engram_bin: engramBin(),
      client_episode_ids: "client-made UUIDs (assignEpisodeIds)",
    },
    results,
    median_obs_per_sec: median,
    target_obs_per_sec: TARGET,
    target_met: median >= TARGET,
  };
  const dir = join(repoRoot, "bench-results");
  mkdirSync(dir, { recursive: true });
  const out = values.out ?? join(dir, `websocket-client-${date}.json`);
  writeFileSync(out, JSON.stringify(report, null, 2) + "\n");
  console.log(`median ${median} obs/s (target ${TARGET}: ${median >= TARGET ? "met" : "NOT met"}); wrote ${out}`);
} finally {
  await server.stop();
}
