// End-to-end tests of engram-client against a real `engram serve` started
// here (ENGRAM_BIN, default target/ci/engram): free ports, temp data dir.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";

import {
  ClientClosedError,
  EngramWebSocketClient,
  ObservationRejectedError,
  ServerError,
} from "../dist/index.js";
import { EngramServer, until, vector } from "./helpers/server.mjs";

const DIM = 16;
let spaceCounter = 0;
const newSpace = (p = "s") => `${p}-${process.pid}-${++spaceCounter}`;
const episode = (i, extra = {}) => ({ what: `observation ${i}`, embedding: vector(DIM, i + 1), ...extra });

/** A `ws` WebSocket subclass that records the instances and every message sent. */
function recordingWebSocket({ timed = false } = {}) {
  const sockets = [];
  const sent = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
    send(data, ...rest) {
      const type = typeof data === "string" ? JSON.parse(data).type : "binary";
      sent.push(timed ? { type, at: performance.now() } : type);
      return super.send(data, ...rest);
    }
  }
  return { Recording, sockets, sent };
}

/** A raw socket with a queue of parsed messages and a close promise. */
async function rawSocket(url) {
  const ws = new WebSocket(url);
  const inbox = [];
  let closed;
  ws.on("message", (d, isBinary) => inbox.push(isBinary ? { binary: true } : JSON.parse(d.toString())));
  ws.on("close", (code, reason) => (closed = { code, reason: reason.toString() }));
  await new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("error", rej);
  });
  return {
    ws,
    send: (m) => ws.send(typeof m === "string" ? m : JSON.stringify(m)),
    next: async (what = "a message", timeoutMs = 5000) => {
      await until(() => inbox.length > 0 || closed, { timeoutMs, what });
      if (inbox.length === 0) throw new Error(`socket closed (${JSON.stringify(closed)}) while waiting for ${what}`);
      return inbox.shift();
    },
    get closed() {
      return closed;
    },
    close: () => ws.close(),
  };
}

describe("engram-client against a real server", () => {
  /** @type {EngramServer} */
  let server;
  const clients = [];
  const client = (space, opts = {}) => {
    const c = new EngramWebSocketClient(server.wsUrl, { space, ...opts });
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await new EngramServer({ walSync: "always" }).start();
  });
  after(async () => {
    for (const c of clients) await c.close({ drain: false }).catch(() => {});
    await server?.stop();
  });

  it("observe resolves with a durable accepted ack", async () => {
    const space = newSpace("observe");
    await server.createSpace(space, DIM);
    const c = client(space);
    const ack = await c.observe(episode(1, { id: "first" }));
    assert.equal(ack.status, "accepted");
    assert.equal(ack.memory_id, "first");
    assert.equal(ack.sequence_number, 1);
    assert.equal(ack.wire_sequence_number, 1);
    assert.equal(ack.duplicate, false);
    assert.ok(ack.server_sequence >= 1);
    assert.ok(!Number.isNaN(Date.parse(ack.committed_at)), `committed_at ${ack.committed_at}`);
    assert.equal(await server.spaceCount(space), 1);
    // The same id again: the server dedupes.
    const again = await c.observe(episode(1, { id: "first" }));
    assert.equal(again.duplicate, true);
    assert.equal(await server.spaceCount(space), 1);
    // An episode without id gets a client-made UUID.
    const auto = await c.observe(episode(2));
    assert.match(auto.memory_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(c.sessionId.length > 0);
    assert.equal(c.capabilities?.dimension, DIM);
  });

  it("observeMany streams 1,000 pipelined observations, acks in order", async () => {
    const space = newSpace("many");
    await server.createSpace(space, DIM);
    const c = client(space);
    async function* source() {
      for (let i = 0; i < 1000; i++) yield episode(i, { id: `m-${i}` });
    }
    let expected = 1;
    for await (const r of c.observeMany(source())) {
      assert.equal(r.status, "accepted", JSON.stringify(r));
      assert.equal(r.sequence_number, expected);
      assert.equal(r.memory_id, `m-${expected - 1}`);
      expected += 1;
    }
    assert.equal(expected, 1001);
    assert.equal(await server.spaceCount(space), 1000);
    assert.equal(c.stats.accepted, 1000);
    // Sync iterables work too, and the caller's objects are not mutated.
    const plain = [episode(5000), episode(5001)];
    const rs = [];
    for await (const r of c.observeMany(plain)) rs.push(r);
    assert.deepEqual(rs.map((r) => r.sequence_number), [1001, 1002]);
    assert.equal(plain[0].id, undefined);
  });

  it("read-after-ack: a recall right after an ack sees the observation", async () => {
    const space = newSpace("rar");
    await server.createSpace(space, DIM);
    const c = client(space);
    for (let i = 0; i < 50; i++) {
      const id = `rar-${i}`;
      const ack = await c.observe(episode(100 + i, { id }));
      const r = await c.recall({ embedding: vector(DIM, 101 + i), max_results: 1 });
      assert.equal(r.memories.length, 1);
      assert.equal(r.memories[0].episode.id, id, `recall after ack ${i}`);
      assert.ok(r.snapshot_sequence >= ack.server_sequence);
    }
  });

  it("recallStream yields batches with one snapshot, the last with more=false", async () => {
    const space = newSpace("batches");
    await server.createSpace(space, DIM);
    const c = client(space);
    // Positive vectors: every cosine >= 0, so the default threshold (0) keeps all 60.
    const pos = (i) => ({ what: `observation ${i}`, embedding: vector(DIM, i + 1, true) });
    for await (const r of c.observeMany(Array.from({ length: 60 }, (_, i) => pos(i)))) {
      assert.equal(r.status, "accepted");
    }
    const batches = [];
    for await (const b of c.recallStream({ embedding: vector(DIM, 1, true), max_results: 45 }, { batchSize: 10 })) {
      batches.push(b);
    }
    assert.equal(batches.length, 5, `batch sizes ${batches.map((b) => b.memories.length)}`);
    assert.deepEqual(batches.map((b) => b.more), [true, true, true, true, false]);
    assert.equal(new Set(batches.map((b) => b.snapshot_sequence)).size, 1);
    assert.equal(batches.flatMap((b) => b.memories).length, 45);
    const merged = await c.recall({ embedding: vector(DIM, 1, true), max_results: 45 }, { batchSize: 10 });
    assert.equal(merged.memories.length, 45);
    assert.equal(merged.batches, 5);
    assert.equal(merged.memories[0].episode.what, "observation 0");
    // A failed recall (bad cue) throws ServerError and the stream goes on.
    await assert.rejects(c.recall({ embedding: [1, 2, 3], max_results: 5 }), (e) => {
      assert.ok(e instanceof ServerError, String(e));
      assert.equal(e.code, "invalid_argument");
      return true;
    });
    await assert.rejects(c.recall({ embedding: vector(DIM, 1) }, { memorySpaceId: newSpace("nope") }), (e) => {
      assert.ok(e instanceof ServerError, String(e));
      assert.equal(e.code, "not_found");
      return true;
    });
    assert.equal((await c.observe(episode(99))).status, "accepted");
  });

  it("more recalls at once than the server's per-stream limit are queued by the client, not refused", async () => {
    const space = newSpace("many-recalls");
    await server.createSpace(space, DIM);
    const c = client(space);
    for await (const r of c.observeMany(Array.from({ length: 20 }, (_, i) => episode(i)))) {
      assert.equal(r.status, "accepted");
    }
    assert.equal(c.capabilities?.max_recalls_per_stream, 16);
    // 100 at once: the server runs at most 16 per stream and would refuse
    // the 17th with resource_exhausted; the client holds the rest back.
    const rs = await Promise.all(
      Array.from({ length: 100 }, (_, i) => c.recall({ embedding: vector(DIM, 1 + (i % 20)), max_results: 3 }, { batchSize: 1 })),
    );
    assert.equal(rs.length, 100);
    assert.ok(rs.every((r) => r.memories.length === 3 && r.batches === 3));
    assert.equal((await c.observe(episode(99))).status, "accepted");
    await c.close();
  });

  it("a wrong-dimension observation is rejected as invalid and the session goes on", async () => {
    const space = newSpace("bad");
    await server.createSpace(space, DIM);
    const c = client(space);
    await assert.rejects(c.observe({ what: "short", embedding: [1, 2, 3] }), (e) => {
      assert.ok(e instanceof ObservationRejectedError, String(e));
      assert.equal(e.reason, "invalid");
      assert.equal(e.sequenceNumber, 1);
      assert.match(e.serverMessage, /dimension|16|3/i);
      return true;
    });
    const ok = await c.observe(episode(7));
    assert.equal(ok.status, "accepted");
    assert.equal(ok.wire_sequence_number, 2, "the rejected observation used its number");
    // observeMany yields rejections in place instead of throwing.
    const rs = [];
    for await (const r of c.observeMany([episode(8), { embedding: [0, 0, 0] }, episode(9)])) rs.push(r.status);
    assert.deepEqual(rs, ["accepted", "rejected", "accepted"]);
  });

  it("an observation over max_message_size is rejected by the client (invalid) without breaking the session", async () => {
    const space = newSpace("big");
    await server.createSpace(space, DIM);
    const c = client(space);
    await c.connect();
    const limit = c.capabilities.max_message_size;
    assert.ok(limit > 0);
    await assert.rejects(c.observe({ what: "é".repeat(Math.ceil(limit / 2) + 10), embedding: vector(DIM, 1) }), (e) => {
      assert.ok(e instanceof ObservationRejectedError, String(e));
      assert.equal(e.reason, "invalid");
      assert.match(e.serverMessage, /max_message_size/);
      return true;
    });
    const ok = await c.observe(episode(2));
    assert.equal(ok.wire_sequence_number, 1, "the local rejection used no wire number");
    assert.equal(c.stats.reconnects, 0);
  });

  it("raw socket: malformed JSON, binary, unknown type, bad observation get the documented answers; the socket stays open", async () => {
    const space = newSpace("raw");
    await server.createSpace(space, DIM);
    const s = await rawSocket(server.wsUrl);
    s.send({ type: "init", memory_space_id: space });
    const ack = await s.next("init_ack");
    assert.equal(ack.type, "init_ack", JSON.stringify(ack));
    assert.equal(ack.last_acked_sequence, 0);

    s.send("this is not json {");
    const e1 = await s.next("error for malformed JSON");
    assert.equal(e1.type, "error", JSON.stringify(e1));
    assert.equal(e1.code, "malformed_json", JSON.stringify(e1));
    assert.notEqual(e1.fatal, true);

    s.send("[1,2,3]");
    const e2 = await s.next("error for a non-object");
    assert.equal(e2.type, "error", JSON.stringify(e2));
    assert.ok(["malformed_json", "invalid_argument"].includes(e2.code), JSON.stringify(e2));

    s.send({ type: "no_such_type", x: 1 });
    const e3 = await s.next("error for an unknown type");
    assert.equal(e3.type, "error", JSON.stringify(e3));
    assert.ok(["malformed_json", "invalid_argument"].includes(e3.code), JSON.stringify(e3));
    assert.match(e3.message, /no_such_type|type/);

    s.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    const e4 = await s.next("error for a binary message");
    assert.equal(e4.type, "error", JSON.stringify(e4));
    assert.equal(e4.code, "invalid_argument", JSON.stringify(e4));

    s.send({ type: "observation", sequence_number: 1, episode: { what: "x", embedding: [1, 2] } });
    const a1 = await s.next("ack for a wrong-dimension observation");
    assert.equal(a1.type, "ack", JSON.stringify(a1));
    assert.equal(a1.sequence_number, 1);
    assert.equal(a1.status, "rejected");
    assert.equal(a1.reason, "invalid", JSON.stringify(a1));

    s.send({ type: "observation", sequence_number: 1, episode: { what: "dup number", embedding: vector(DIM, 3) } });
    const a2 = await s.next("ack for a reused number");
    assert.equal(a2.status, "rejected", JSON.stringify(a2));
    assert.equal(a2.reason, "out_of_order", JSON.stringify(a2));

    s.send({ type: "observation", sequence_number: 2, episode: { id: "raw-ok", what: "ok", embedding: vector(DIM, 3) } });
    const a3 = await s.next("ack for a good observation");
    assert.equal(a3.status, "accepted", JSON.stringify(a3));
    assert.equal(a3.sequence_number, 2);
    assert.equal(a3.memory_id, "raw-ok");
    assert.equal(a3.replayed, false);

    s.send({ type: "heartbeat" });
    assert.deepEqual(await s.next("heartbeat answer"), { type: "heartbeat" });
    assert.equal(s.closed, undefined, "the socket stays open");

    s.send({ type: "close", drain: true });
    let m;
    do m = await s.next("closed");
    while (m.type === "status");
    assert.equal(m.type, "closed", JSON.stringify(m));
    assert.equal(m.accepted, 1);
    assert.equal(m.final_sequence, 2);
    await until(() => s.closed, { what: "the socket close" });
    assert.equal(s.closed.code, 1000);
  });

  it("raw socket: an observation before init is fatal (1008); init resuming an unknown session is not_found (1008)", async () => {
    const s = await rawSocket(server.wsUrl);
    s.send({ type: "observation", sequence_number: 1, episode: episode(1) });
    const e = await s.next("error");
    assert.equal(e.type, "error");
    assert.equal(e.fatal, true, JSON.stringify(e));
    await until(() => s.closed, { what: "close" });
    assert.equal(s.closed.code, 1008);

    const s2 = await rawSocket(server.wsUrl);
    s2.send({ type: "init", memory_space_id: "x", resume_session_id: "no-such-session" });
    const e2 = await s2.next("error");
    assert.equal(e2.code, "not_found", JSON.stringify(e2));
    await until(() => s2.closed, { what: "close" });
    assert.equal(s2.closed.code, 1008);
  });

  it("raw socket: a message over max_message_size closes the socket with 1009", async () => {
    const space = newSpace("raw-big");
    await server.createSpace(space, DIM);
    const s = await rawSocket(server.wsUrl);
    s.send({ type: "init", memory_space_id: space });
    const ack = await s.next("init_ack");
    const limit = ack.capabilities.max_message_size;
    s.send({ type: "observation", sequence_number: 1, episode: { what: "x".repeat(limit), embedding: vector(DIM, 1) } });
    await until(() => s.closed, { timeoutMs: 5000, what: "the close" });
    assert.equal(s.closed.code, 1009, `closed with ${JSON.stringify(s.closed)}`);
  });

  it("pause stops recall batches until resume; observations still flow", async () => {
    const space = newSpace("pause");
    await server.createSpace(space, DIM);
    const c = client(space);
    await c.observe(episode(1));
    const st = await c.pause();
    assert.equal(st?.state, "paused", JSON.stringify(st));
    let done = false;
    const pending = c.recall({ embedding: vector(DIM, 2), max_results: 3 }).then((r) => {
      done = true;
      return r;
    });
    const ack = await c.observe(episode(2));
    assert.equal(ack.status, "accepted");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(done, false, "no recall batch while paused");
    const st2 = await c.resume();
    assert.equal(st2?.state, "active", JSON.stringify(st2));
    const r = await pending;
    // The recall's snapshot point was fixed when it started, before
    // episode 2 was acked: it sees episode 1 only.
    assert.equal(r.memories.length, 1, JSON.stringify(r));
    assert.equal(r.memories[0].episode.what, episode(1).what);
  });

  it("close drains and resolves with the closed summary; later calls fail", async () => {
    const space = newSpace("close");
    await server.createSpace(space, DIM);
    const c = client(space);
    const acks = [];
    for (let i = 0; i < 20; i++) acks.push(c.observe(episode(i)));
    const summary = await c.close();
    assert.equal(summary.type, "closed");
    assert.equal(summary.accepted, 20);
    assert.equal(summary.rejected, 0);
    assert.equal(summary.final_sequence, 20);
    assert.equal((await Promise.all(acks)).length, 20);
    assert.equal(c.state, "closed");
    await assert.rejects(c.observe(episode(1)), ClientClosedError);
    assert.deepEqual(await c.close(), summary);
    assert.equal(await server.spaceCount(space), 20);
  });

  it("close without drain rejects what was not sent with closed and resolves with the summary", async () => {
    const space = newSpace("close-nodrain");
    await server.createSpace(space, DIM);
    const c = client(space, { maxInFlight: 4 });
    await c.connect();
    const results = Array.from({ length: 50 }, (_, i) =>
      c.observe(episode(i)).then(
        (a) => a.status,
        (e) => (e instanceof ObservationRejectedError ? e.reason : String(e)),
      ),
    );
    const summary = await c.close({ drain: false });
    const answers = await Promise.all(results);
    assert.equal(answers.length, 50);
    assert.ok(answers.every((a) => a === "accepted" || a === "closed"), JSON.stringify(answers));
    assert.ok(answers.includes("closed"), "some were never sent");
    const accepted = answers.filter((a) => a === "accepted").length;
    assert.equal(summary.accepted, accepted);
    assert.equal(await server.spaceCount(space), accepted);
  });

  it("heartbeats on an interval when idle", async () => {
    const space = newSpace("hb");
    await server.createSpace(space, DIM);
    const { Recording, sent } = recordingWebSocket();
    const c = client(space, { WebSocket: Recording, heartbeatIntervalMs: 100, heartbeatTimeoutMs: 2000 });
    await c.connect();
    await until(() => sent.filter((t) => t === "heartbeat").length >= 3, { timeoutMs: 3000, what: "3 heartbeats" });
    assert.equal(c.state, "open");
    assert.equal(c.stats.reconnects, 0);
  });

  it("a dropped connection reconnects and resumes the session: nothing lost, nothing stored twice", async () => {
    const space = newSpace("resume");
    await server.createSpace(space, DIM);
    const { Recording, sockets } = recordingWebSocket();
    const c = client(space, { WebSocket: Recording, reconnect: { initialMs: 20, maxMs: 200 } });
    const events = [];
    c.on("reconnecting", (e) => events.push(["reconnecting", e.attempt]));
    c.on("reconnected", (e) => events.push(["reconnected", e.resumed, e.resent]));
    const N = 1500;
    let cut = false;
    const results = [];
    for await (const r of c.observeMany(Array.from({ length: N }, (_, i) => episode(i, { id: `res-${i}` })))) {
      results.push(r);
      if (!cut && results.length === 300) {
        cut = true;
        sockets.at(-1).terminate(); // like a network failure: no close frame
      }
    }
    assert.equal(results.length, N);
    assert.ok(results.every((r) => r.status === "accepted"), "all accepted");
    assert.deepEqual(results.map((r) => r.sequence_number), Array.from({ length: N }, (_, i) => i + 1));
    assert.ok(events.some((e) => e[0] === "reconnected" && e[1] === true), JSON.stringify(events));
    assert.equal(c.stats.sessionsReplaced, 0);
    assert.equal(await server.spaceCount(space), N);
    assert.equal(results.filter((r) => r.duplicate).length, 0);
    const replayed = results.filter((r) => r.replayed).length;
    console.log(`# resume test: resent=${c.stats.resent} replayed=${replayed} events=${JSON.stringify(events)}`);
    assert.ok(c.stats.resent > 0, "something was resent under its old number");
    assert.ok(replayed <= c.stats.resent);
  });
});

describe("overload and SLOW_DOWN (queue capacity 200, indexer paused)", () => {
  /** @type {EngramServer} */
  let server;
  before(async () => {
    server = await new EngramServer({ queueCapacity: 200, faultInjection: true, walSync: "interval" }).start();
  });
  after(async () => {
    await server?.post("/v1/admin/indexing/resume").catch(() => {});
    await server?.stop();
  });

  it("overloaded observations are retried after retry_after and all accepted in the end", async () => {
    const space = newSpace("overload");
    await server.createSpace(space, DIM);
    assert.equal(await server.post("/v1/admin/indexing/pause"), 200);
    const { Recording, sent } = recordingWebSocket({ timed: true });
    const c = new EngramWebSocketClient(server.wsUrl, { space, enableBackpressure: false, WebSocket: Recording });
    const retries = [];
    c.on("retrying", (e) => retries.push({ ...e, at: performance.now() }));
    const N = 500;
    const all = (async () => {
      const out = [];
      for await (const r of c.observeMany(Array.from({ length: N }, (_, i) => episode(i, { id: `ov-${i}` })))) out.push(r);
      return out;
    })();
    await until(() => retries.length > 0, { timeoutMs: 15_000, what: "an overloaded rejection being retried" });
    const first = retries[0];
    assert.ok(first.delayMs > 0, JSON.stringify(first));
    // Nothing is sent while the retry_after hold runs.
    await new Promise((r) => setTimeout(r, first.delayMs + 50));
    const during = sent.filter((m) => m.type === "observation" && m.at > first.at + 2 && m.at < first.at + first.delayMs - 2);
    assert.deepEqual(during, [], `observations sent during the ${first.delayMs} ms hold`);
    console.log(`# overload: first retry ${JSON.stringify(first)}; retries so far ${retries.length}`);
    assert.equal(await server.post("/v1/admin/indexing/resume"), 200);
    const out = await all;
    assert.equal(out.length, N);
    const bad = out.filter((r) => r.status !== "accepted");
    assert.deepEqual(bad, []);
    assert.ok(out.some((r) => r.retries > 0));
    assert.equal(await server.spaceCount(space), N);
    await c.close();
  });

  it("SLOW_DOWN (status backpressure or overloaded) is honoured: the client paces at suggested_rate until active", async () => {
    const space = newSpace("slow");
    await server.createSpace(space, DIM);
    assert.equal(await server.post("/v1/admin/indexing/pause"), 200);
    // A small window, so new observations (not only retries) wait for acks and the pace shows.
    const c = new EngramWebSocketClient(server.wsUrl, { space, enableBackpressure: true, maxInFlight: 32 });
    const statuses = [];
    c.on("status", (s) => statuses.push({ ...s, at: performance.now(), sent: c.stats.sent }));
    const N = 400;
    const all = (async () => {
      const out = [];
      for await (const r of c.observeMany(Array.from({ length: N }, (_, i) => episode(i, { id: `sl-${i}` })))) out.push(r);
      return out;
    })();
    // The server reports the latest pressure level: a burst can carry the
    // queue from below SLOW_DOWN to full before the status goes out, so the
    // first pressure status may say `overloaded`. Both carry a rate the
    // client must pace at.
    const bp = await until(() => statuses.find((s) => s.state === "backpressure" || s.state === "overloaded"), {
      timeoutMs: 15_000,
      what: "a backpressure (or overloaded) status",
    });
    assert.ok(bp.suggested_rate > 0, JSON.stringify(bp));
    console.log(`# slow down: ${JSON.stringify(bp)}`);
    console.log(`# slow down statuses: ${JSON.stringify(statuses.map((x) => [Math.round(x.at), x.state, x.suggested_rate, x.sent]))}`);
    await until(() => c.pacingRate !== undefined, { timeoutMs: 2000, what: "the client pacing" });
    // Watch the send rate for a second.
    const rate = Math.max(1, c.pacingRate);
    const s0 = c.stats.sent;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const sentInWindow = c.stats.sent - s0;
    const secs = (performance.now() - t0) / 1000;
    assert.ok(
      sentInWindow <= rate * secs + 2,
      `sent ${sentInWindow} in ${secs.toFixed(2)} s at a pace of ${rate}/s (status ${JSON.stringify(bp)})`,
    );
    assert.equal(await server.post("/v1/admin/indexing/resume"), 200);
    await until(() => statuses.some((s) => s.state === "active" && s.at > bp.at), {
      timeoutMs: 20_000,
      what: "an active status after the indexer resumed",
    });
    const out = await all;
    assert.equal(out.filter((r) => r.status === "accepted").length, N);
    assert.equal(c.pacingRate, undefined);
    assert.equal(await server.spaceCount(space), N);
    await c.close();
  });
});

describe("server killed with SIGKILL mid-stream and restarted on the same data dir and ports", () => {
  /** @type {EngramServer} */
  let server;
  before(async () => {
    server = await new EngramServer({ walSync: "always" }).start();
  });
  after(async () => {
    await server?.stop();
  });

  it("the client reconnects and resumes: nothing acked lost, nothing stored twice", async () => {
    const space = newSpace("kill");
    await server.createSpace(space, DIM);
    const c = new EngramWebSocketClient(server.wsUrl, {
      space,
      reconnect: { initialMs: 50, maxMs: 500, maxAttempts: 60 },
    });
    const events = [];
    c.on("reconnecting", (e) => events.push({ ev: "reconnecting", attempt: e.attempt, error: e.error.message }));
    c.on("reconnected", (e) => events.push({ ev: "reconnected", ...e }));
    const N = 3000;
    const sent = Array.from({ length: N }, (_, i) => episode(i, { id: `k-${i}` }));
    const acked = [];
    let killed;
    const all = (async () => {
      for await (const r of c.observeMany(sent)) {
        acked.push(r);
        if (!killed && acked.length === 700) {
          killed = (async () => {
            await server.kill("SIGKILL");
            await new Promise((r) => setTimeout(r, 300));
            await server.start();
          })();
        }
      }
    })();
    await all;
    await killed;
    assert.equal(acked.length, N);
    const notAccepted = acked.filter((r) => r.status !== "accepted");
    assert.deepEqual(notAccepted, []);
    assert.ok(events.some((e) => e.ev === "reconnected"), JSON.stringify(events));
    // Count in the space == distinct episodes sent.
    assert.equal(await server.spaceCount(space), N);
    // Every acked id is recallable.
    const missing = [];
    for (let i = 0; i < N; i += 100) {
      const rs = await Promise.all(
        sent.slice(i, i + 100).map((ep) => c.recall({ embedding: ep.embedding, max_results: 1 })),
      );
      rs.forEach((r, j) => {
        if (r.memories[0]?.episode.id !== sent[i + j].id) missing.push(sent[i + j].id);
      });
    }
    assert.deepEqual(missing, []);
    const summary = await c.close();
    assert.equal(summary.type, "closed");
    console.log(
      `# kill test: reconnects=${c.stats.reconnects} sessionsReplaced=${c.stats.sessionsReplaced} resent=${c.stats.resent} duplicates=${acked.filter((r) => r.duplicate).length} replayed=${acked.filter((r) => r.replayed).length}`,
    );
  });

  it("a graceful restart (SIGTERM: status closing, error unavailable, close 1013) is ridden out the same way", async () => {
    const space = newSpace("term");
    await server.createSpace(space, DIM);
    const c = new EngramWebSocketClient(server.wsUrl, { space, reconnect: { initialMs: 50, maxMs: 500, maxAttempts: 60 } });
    const closeCodes = [];
    c.on("reconnecting", (e) => closeCodes.push(e.error.closeCode));
    const N = 2000;
    const sent = Array.from({ length: N }, (_, i) => episode(i, { id: `t-${i}` }));
    const acked = [];
    let restarted;
    for await (const r of c.observeMany(sent)) {
      acked.push(r);
      if (!restarted && acked.length === 500) {
        restarted = (async () => {
          await server.kill("SIGTERM");
          await server.start();
        })();
      }
    }
    await restarted;
    assert.deepEqual(acked.filter((r) => r.status !== "accepted"), []);
    // The document says 1013; under load the close frame is often lost (see the raw test below), so 1006 is ridden out too.
    assert.ok([1013, 1006].includes(closeCodes[0]), `first reconnect after close code ${closeCodes[0]}`);
    console.log(`# graceful restart: close codes seen ${JSON.stringify(closeCodes)}`);
    assert.ok(c.stats.reconnects >= 1);
    assert.equal(await server.spaceCount(space), N);
    await c.close();
  });

  it("raw socket: SIGTERM while a client streams sends status closing, error unavailable (fatal) and close 1013", async () => {
    const space = newSpace("term-raw");
    await server.createSpace(space, DIM);
    const ws = new WebSocket(server.wsUrl);
    const got = [];
    let closed;
    let acked = 0;
    let sent = 0;
    const pump = () => {
      while (ws.readyState === WebSocket.OPEN && sent - acked < 1024 && sent < 100_000) {
        sent += 1;
        ws.send(JSON.stringify({ type: "observation", sequence_number: sent, episode: { id: `tr-${sent}`, what: "x", embedding: vector(DIM, sent) } }));
      }
    };
    ws.on("message", (d) => {
      const m = JSON.parse(d.toString());
      if (m.type === "init_ack") pump();
      else if (m.type === "ack") {
        acked += 1;
        pump();
      } else got.push(m);
    });
    ws.on("close", (code, reason) => (closed = { code, reason: reason.toString() }));
    ws.on("error", () => {});
    await new Promise((r) => ws.once("open", r));
    ws.send(JSON.stringify({ type: "init", memory_space_id: space }));
    await until(() => acked >= 500, { what: "500 acks" });
    await server.kill("SIGTERM");
    await until(() => closed, { what: "the close" });
    await server.start();
    const summary = `close ${JSON.stringify(closed)}, messages ${JSON.stringify(got)}, acked ${acked}, sent ${sent}`;
    assert.equal(closed.code, 1013, summary);
    assert.ok(got.some((m) => m.type === "error" && m.code === "unavailable" && m.fatal === true), summary);
  });
});
