// End-to-end tests of memory expiry (episode.expires_at / ttl_seconds, a
// space's default_ttl_seconds) through engram-client against a real
// `engram serve` started here (ENGRAM_BIN, default target/ci/engram): free
// ports, temp data dir, fault injection on, for the test clock
// (`POST /v1/admin/faults {"advance_clock_seconds": N}` moves the server's
// expiry clock forward, cumulatively) and to pause the indexer.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { EngramWebSocketClient, ObservationRejectedError } from "../dist/index.js";
import { EngramServer, until } from "./helpers/server.mjs";

const DIM = 8;
const HOUR = 3600;
/** 100 years in seconds: the largest ttl_seconds the server takes. */
const MAX_TTL = 3_155_760_000;
/** Slack between this process's clock and the server's "accepted at" (same machine; generous for slow CI). */
const SLACK_MS = 30_000;
let spaceCounter = 0;
const newSpace = (p = "x") => `${p}-${process.pid}-${++spaceCounter}`;

/** The cue: the first axis. */
const CUE = [1, 0, 0, 0, 0, 0, 0, 0];
/** `[1, x, 0...]`: cosine with the cue 1/sqrt(1 + x^2) (positive, lower as x grows). */
const leaning = (x) => [1, x, 0, 0, 0, 0, 0, 0];

describe("memory expiry against a real server", () => {
  /** @type {EngramServer} */
  let server;
  const clients = [];
  const client = (space, opts = {}) => {
    const c = new EngramWebSocketClient(server.wsUrl, { space, ...opts });
    clients.push(c);
    return c;
  };
  /** The server's clock offset (seconds), as its last faults answer said. */
  let offsetS = 0;
  /** The server's expiry clock, as far as this process can tell (ms since the epoch). */
  const serverNow = () => Date.now() + offsetS * 1000;

  before(async () => {
    server = await new EngramServer({ faultInjection: true }).start();
  });
  after(async () => {
    await server?.post("/v1/admin/indexing/resume").catch(() => {});
    for (const c of clients) await c.close({ drain: false }).catch(() => {});
    await server?.stop();
  });

  /** Moves the server's expiry clock forward by `seconds`; checks the cumulative offset it reports. */
  async function advanceClock(seconds) {
    const r = await server.json("POST", "/v1/admin/faults", { advance_clock_seconds: seconds });
    assert.equal(r.status, 200, `POST /v1/admin/faults advance_clock_seconds=${seconds}: ${r.status} ${JSON.stringify(r.data)}`);
    assert.equal(typeof r.data?.clock_offset_seconds, "number", `the answer has clock_offset_seconds: ${JSON.stringify(r.data)}`);
    assert.ok(Math.abs(r.data.clock_offset_seconds - (offsetS + seconds)) < 1e-3, `offset ${offsetS} + ${seconds}: ${JSON.stringify(r.data)}`);
    offsetS = r.data.clock_offset_seconds;
  }

  /** `GET /v1/spaces/{id}`. */
  async function describeSpace(space) {
    const r = await server.json("GET", `/v1/spaces/${encodeURIComponent(space)}`);
    assert.equal(r.status, 200, `GET space ${space}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data;
  }

  /** Creates a space over REST, with a default TTL when given. */
  async function createSpace(space, defaultTtlSeconds) {
    const body = { dimension: DIM };
    if (defaultTtlSeconds !== undefined) body.default_ttl_seconds = defaultTtlSeconds;
    const r = await server.json("PUT", `/v1/spaces/${encodeURIComponent(space)}`, body);
    assert.ok(r.status === 200 || r.status === 201, `PUT space ${space} ${JSON.stringify(body)}: ${r.status} ${JSON.stringify(r.data)}`);
  }

  /** Polls the space's description until the expired memories are purged: `expired_count` and `count` as given. */
  async function purged(space, { expired, count }) {
    let last;
    await until(
      async () => {
        last = await describeSpace(space);
        return last.expired_count === expired && last.count === count;
      },
      { timeoutMs: 15_000, stepMs: 50, what: `space ${space}: expired_count ${expired}, count ${count}` },
    ).catch((e) => {
      throw new Error(`${e.message}; last GET: ${JSON.stringify(last)}`);
    });
    return last;
  }

  /** Recalled memories by the cue, as a Map id -> episode (the order checked separately where it matters). */
  async function recalled(c, maxResults = 10) {
    const r = await c.recall({ embedding: CUE, max_results: maxResults });
    return new Map(r.memories.map((m) => [m.episode.id, m.episode]));
  }
  const idsOf = (m) => [...m.keys()].sort();

  /** `expires_at` (RFC 3339) is about `expectedMs` (give or take SLACK_MS). */
  function assertAbout(expiresAt, expectedMs, what) {
    assert.equal(typeof expiresAt, "string", `${what}: expires_at is an RFC 3339 string (${expiresAt})`);
    const t = Date.parse(expiresAt);
    assert.ok(Number.isFinite(t), `${what}: expires_at parses (${expiresAt})`);
    assert.ok(Math.abs(t - expectedMs) <= SLACK_MS, `${what}: expires_at ${expiresAt}, expected about ${new Date(expectedMs).toISOString()}`);
  }

  it("ttl_seconds: recalled (with expires_at) until the clock passes it, then never; purged and counted in expired_count", async () => {
    const space = newSpace("ttl");
    await createSpace(space);
    const info = await describeSpace(space);
    assert.equal(info.default_ttl_seconds, 0, `no default TTL: ${JSON.stringify(info)}`);
    assert.equal(info.expired_count, 0, JSON.stringify(info));
    const c = client(space);
    const acceptedAt = serverNow();
    // The expiring memory is the most similar to the cue, the lasting one less so.
    assert.equal((await c.observe({ id: "ttl-short", what: "parked on level 2", embedding: leaning(0.1), ttl_seconds: HOUR })).status, "accepted");
    assert.equal((await c.observe({ id: "ttl-lasting", what: "Ada's birthday is in May", embedding: leaning(0.5) })).status, "accepted");

    const m = await recalled(c);
    assert.deepEqual(idsOf(m), ["ttl-lasting", "ttl-short"]);
    assertAbout(m.get("ttl-short").expires_at, acceptedAt + HOUR * 1000, "ttl-short");
    assert.equal("ttl_seconds" in m.get("ttl-short"), false, "answers carry expires_at, not ttl_seconds");
    assert.equal("expires_at" in m.get("ttl-lasting"), false, "a memory that never expires has no expires_at");

    // From the index too (not only the not-yet-indexed tier).
    await until(
      async () => {
        const r = await c.recall({ embedding: CUE, max_results: 2 });
        return r.memories.length === 2 && r.memories.every((x) => x.indexed);
      },
      { timeoutMs: 20_000, what: "both memories indexed" },
    );

    // Half a minute before it expires (by the instant the server reported): still recalled.
    const expiresAtMs = Date.parse(m.get("ttl-short").expires_at);
    await advanceClock((expiresAtMs - serverNow()) / 1000 - 30);
    assert.deepEqual(idsOf(await recalled(c)), ["ttl-lasting", "ttl-short"], "30 s before expiry");

    // Past it: never recalled, from the first recall after the clock moved (not only once purged).
    await advanceClock(31);
    assert.deepEqual(idsOf(await recalled(c)), ["ttl-lasting"], "just expired");
    // Excluded inside the search: a recall of 1 gets the lasting memory, not nothing.
    const one = await c.recall({ embedding: CUE, max_results: 1 });
    assert.deepEqual(one.memories.map((x) => x.episode.id), ["ttl-lasting"]);
    const batches = [];
    for await (const b of c.recallStream({ embedding: CUE, max_results: 10 }, { batchSize: 1 })) batches.push(b.memories.map((x) => x.episode.id));
    assert.deepEqual(batches.flat(), ["ttl-lasting"], "recallStream too");

    const described = await purged(space, { expired: 1, count: 1 });
    assert.equal(described.default_ttl_seconds, 0);
    assert.deepEqual(idsOf(await recalled(c)), ["ttl-lasting"], "after the purge");
    assert.equal(c.state, "open");
    assert.equal(c.stats.reconnects, 0);
  });

  it("expires_at (string or Date): echoed in the recalled episode; each memory gone once the clock passes its own instant", async () => {
    const space = newSpace("at");
    await createSpace(space);
    const c = client(space);
    // A whole-second string and a Date with milliseconds, both in the server's future.
    const soon = new Date(Math.floor(serverNow() / 1000) * 1000 + 10 * 60_000).toISOString().replace(".000Z", "Z");
    const later = new Date(Math.floor(serverNow() / 1000) * 1000 + 20 * 60_000 + 250);
    assert.equal((await c.observe({ id: "at-soon", embedding: leaning(0.1), expires_at: soon })).status, "accepted");
    assert.equal((await c.observe({ id: "at-later", embedding: leaning(0.2), expires_at: later })).status, "accepted");
    assert.equal((await c.observe({ id: "at-never", embedding: leaning(0.3) })).status, "accepted");

    const m = await recalled(c);
    assert.deepEqual(idsOf(m), ["at-later", "at-never", "at-soon"]);
    assert.equal(Date.parse(m.get("at-soon").expires_at), Date.parse(soon), `echoed: ${m.get("at-soon").expires_at} vs ${soon}`);
    assert.equal(Date.parse(m.get("at-later").expires_at), later.getTime(), `echoed (a Date, ms kept): ${m.get("at-later").expires_at} vs ${later.toISOString()}`);
    assert.equal("expires_at" in m.get("at-never"), false);

    // The indexer paused: the memories stay in the not-yet-indexed tier, where expiry applies too.
    assert.equal(await server.post("/v1/admin/indexing/pause"), 200);
    try {
      await c.observe({ id: "at-fresh", embedding: leaning(0.05), expires_at: soon });
      const r = await c.recall({ embedding: CUE, max_results: 10 });
      assert.equal(r.memories.find((x) => x.episode.id === "at-fresh")?.indexed, false, "at-fresh is not indexed");
      // Past `soon` (by a few seconds), before `later`.
      await advanceClock((Date.parse(soon) - serverNow()) / 1000 + 5);
      assert.deepEqual(idsOf(await recalled(c)), ["at-later", "at-never"], "past the first instant (indexer paused)");
    } finally {
      assert.equal(await server.post("/v1/admin/indexing/resume"), 200);
    }
    assert.deepEqual(idsOf(await recalled(c)), ["at-later", "at-never"], "past the first instant (indexer resumed)");
    await purged(space, { expired: 2, count: 2 });

    // Past `later`.
    await advanceClock((later.getTime() - serverNow()) / 1000 + 5);
    assert.deepEqual(idsOf(await recalled(c)), ["at-never"], "past the second instant");
    await purged(space, { expired: 3, count: 1 });
    assert.deepEqual(idsOf(await recalled(c)), ["at-never"], "after the purge");
  });

  it("a space's default_ttl_seconds applies to episodes without their own expiry", async () => {
    const space = newSpace("dflt");
    await createSpace(space, 120);
    const info = await describeSpace(space);
    assert.equal(info.default_ttl_seconds, 120, JSON.stringify(info));
    assert.equal(info.expired_count, 0, JSON.stringify(info));
    const c = client(space);
    const acceptedAt = serverNow();
    const farAt = new Date(Math.floor(serverNow() / 1000) * 1000 + 2 * HOUR * 1000).toISOString();
    assert.equal((await c.observe({ id: "dflt-plain", embedding: leaning(0.1) })).status, "accepted");
    assert.equal((await c.observe({ id: "dflt-ttl", embedding: leaning(0.2), ttl_seconds: HOUR })).status, "accepted");
    assert.equal((await c.observe({ id: "dflt-at", embedding: leaning(0.3), expires_at: farAt })).status, "accepted");

    const m = await recalled(c);
    assert.deepEqual(idsOf(m), ["dflt-at", "dflt-plain", "dflt-ttl"]);
    assertAbout(m.get("dflt-plain").expires_at, acceptedAt + 120_000, "dflt-plain (the space's default)");
    assertAbout(m.get("dflt-ttl").expires_at, acceptedAt + HOUR * 1000, "dflt-ttl (its own ttl_seconds wins)");
    assert.equal(Date.parse(m.get("dflt-at").expires_at), Date.parse(farAt), "dflt-at (its own expires_at wins)");

    // Past the default TTL: only the episodes with their own (longer) expiry are left.
    await advanceClock(150);
    assert.deepEqual(idsOf(await recalled(c)), ["dflt-at", "dflt-ttl"]);
    const described = await purged(space, { expired: 1, count: 2 });
    assert.equal(described.default_ttl_seconds, 120);
  });

  it("both expires_at and ttl_seconds: that observation is rejected invalid (naming the field); the stream goes on", async () => {
    const space = newSpace("both");
    await createSpace(space);
    const c = client(space);
    await assert.rejects(
      c.observe({ id: "both-1", embedding: leaning(0.1), expires_at: new Date(serverNow() + HOUR * 1000), ttl_seconds: 60 }),
      (e) => {
        assert.ok(e instanceof ObservationRejectedError, String(e));
        assert.equal(e.reason, "invalid", e.message);
        assert.match(e.serverMessage, /episode\.(expires_at|ttl_seconds)/);
        assert.equal(e.retries, 0);
        return true;
      },
    );
    // The next observation on the same stream is acked.
    const ok = await c.observe({ id: "both-ok", embedding: leaning(0.2), ttl_seconds: 60 });
    assert.equal(ok.status, "accepted");
    assert.equal(ok.wire_sequence_number, 2, "the rejected observation used its number");
    // observeMany: the rejection is yielded, not thrown; the ones after it are accepted.
    const results = [];
    for await (const r of c.observeMany([
      { id: "both-2", embedding: leaning(0.3), expires_at: new Date(serverNow() + HOUR * 1000).toISOString(), ttl_seconds: HOUR },
      { id: "both-ok2", embedding: leaning(0.4) },
    ])) results.push(r);
    assert.deepEqual(results.map((r) => r.status), ["rejected", "accepted"], JSON.stringify(results));
    assert.equal(results[0].reason, "invalid");
    assert.match(results[0].message, /episode\.(expires_at|ttl_seconds)/);
    assert.deepEqual(idsOf(await recalled(c)), ["both-ok", "both-ok2"], "nothing stored for the rejected ones");
    assert.equal(c.state, "open");
    assert.equal(c.stats.reconnects, 0);
    assert.equal(await server.spaceCount(space), 2);
  });

  it("expires_at in the past (by the server's clock), a malformed one, or ttl_seconds out of range: rejected invalid naming the field; the stream goes on", async () => {
    const space = newSpace("bad");
    await createSpace(space);
    const c = client(space);
    const refused = async (episode, field) => {
      await assert.rejects(c.observe(episode), (e) => {
        assert.ok(e instanceof ObservationRejectedError, `${episode.id}: ${e}`);
        assert.equal(e.reason, "invalid", `${episode.id}: ${e.message}`);
        assert.ok(e.serverMessage.includes(field), `${episode.id}: the message names ${field}: ${e.serverMessage}`);
        return true;
      });
    };
    await refused({ id: "bad-past", embedding: leaning(0.1), expires_at: new Date(serverNow() - 60_000) }, "episode.expires_at");
    await refused({ id: "bad-past-str", embedding: leaning(0.1), expires_at: "2001-01-01T00:00:00Z" }, "episode.expires_at");
    await refused({ id: "bad-malformed", embedding: leaning(0.1), expires_at: "tomorrow" }, "expires_at");
    await refused({ id: "bad-neg", embedding: leaning(0.1), ttl_seconds: -5 }, "episode.ttl_seconds");
    await refused({ id: "bad-zero", embedding: leaning(0.1), ttl_seconds: 0 }, "episode.ttl_seconds");
    await refused({ id: "bad-long", embedding: leaning(0.1), ttl_seconds: MAX_TTL + 1 }, "episode.ttl_seconds");
    // 100 years exactly is allowed.
    assert.equal((await c.observe({ id: "bad-century", embedding: leaning(0.2), ttl_seconds: MAX_TTL })).status, "accepted");

    // The server's clock decides: an hour ahead of this process, a time 10 minutes
    // into this process's future is in the server's past.
    await advanceClock(HOUR);
    await refused({ id: "bad-server-past", embedding: leaning(0.1), expires_at: new Date(Date.now() + 10 * 60_000) }, "episode.expires_at");
    assert.equal((await c.observe({ id: "bad-server-future", embedding: leaning(0.3), expires_at: new Date(serverNow() + 10 * 60_000) })).status, "accepted");

    assert.deepEqual(idsOf(await recalled(c)), ["bad-century", "bad-server-future"]);
    assert.equal(c.state, "open");
    assert.equal(c.stats.reconnects, 0);
    assert.equal(c.stats.rejected, 7);
    assert.equal(await server.spaceCount(space), 2);
  });
});
