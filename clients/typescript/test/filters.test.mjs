// End-to-end tests of recall filters (cue.filter: tags_all / tags_any /
// tags_none / metadata) through engram-client against a real `engram serve`
// started here (ENGRAM_BIN, default target/ci/engram): free ports, temp
// data dir, fault injection on (to pause the indexer).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { EngramWebSocketClient, ServerError } from "../dist/index.js";
import { EngramServer, until, vector } from "./helpers/server.mjs";

const DIM = 16;
let spaceCounter = 0;
const newSpace = (p = "f") => `${p}-${process.pid}-${++spaceCounter}`;

const USERS = ["ada", "bob", "cy"];
const SOURCES = ["chat", "mail", "web", "sms"];
/** Episode i: tags even|odd, plus "three" (i % 3 == 0) and "five" (i % 5 == 0); metadata user and source. */
function tagged(i, prefix = "e") {
  const tags = [i % 2 === 0 ? "even" : "odd"];
  if (i % 3 === 0) tags.push("three");
  if (i % 5 === 0) tags.push("five");
  // Positive vectors: every cosine >= 0, so the default threshold (0) drops nothing.
  return {
    id: `${prefix}-${i}`,
    what: `episode ${i}`,
    embedding: vector(DIM, i + 1, true),
    tags,
    metadata: { user: USERS[i % USERS.length], source: SOURCES[i % SOURCES.length], n: String(i) },
  };
}

/** The client-side meaning of a filter (the contract), to compute what the server must return. */
function matches(filter, e) {
  const has = (t) => e.tags.includes(t);
  const all = filter.tags_all ?? [];
  const any = filter.tags_any ?? [];
  const none = filter.tags_none ?? [];
  return (
    all.every(has) &&
    (any.length === 0 || any.some(has)) &&
    !none.some(has) &&
    Object.entries(filter.metadata ?? {}).every(([k, v]) => (Array.isArray(v) ? v : [v]).includes(e.metadata[k]))
  );
}

describe("recall filters against a real server", () => {
  /** @type {EngramServer} */
  let server;
  const clients = [];
  const client = (space, opts = {}) => {
    const c = new EngramWebSocketClient(server.wsUrl, { space, ...opts });
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await new EngramServer({ faultInjection: true }).start();
  });
  after(async () => {
    await server?.post("/v1/admin/indexing/resume").catch(() => {});
    for (const c of clients) await c.close({ drain: false }).catch(() => {});
    await server?.stop();
  });

  /** Observes episodes 0..n-1 (tagged) into a new space; returns the client and the episodes. */
  async function seeded(n, prefix) {
    const space = newSpace(prefix);
    await server.createSpace(space, DIM);
    const c = client(space);
    const episodes = Array.from({ length: n }, (_, i) => tagged(i, prefix));
    for await (const r of c.observeMany(episodes)) assert.equal(r.status, "accepted", JSON.stringify(r));
    return { c, space, episodes };
  }

  it("tags_all / tags_any / tags_none / metadata (equals and in) return only matching memories, min(k, matching) of them", async () => {
    const N = 60;
    const { c, episodes } = await seeded(N, "tags");
    const q = vector(DIM, 7, true);
    // Every memory, ranked: the filtered top-k must be the top-k of the matching ones.
    const everything = await c.recall({ embedding: q, max_results: N, ef_search: 512 });
    assert.equal(everything.memories.length, N);
    const ranked = everything.memories.map((m) => m.episode.id);
    const byId = new Map(episodes.map((e) => [e.id, e]));

    const cases = [
      { tags_all: ["even", "three"] }, // i % 6 == 0: 10
      { tags_all: ["three"], tags_none: ["even"] }, // odd multiples of 3: 10
      { tags_any: ["three", "five"] }, // 28
      { tags_any: ["five"], tags_none: ["three"] }, // 8
      { tags_none: ["even", "three", "five"] }, // 16
      { metadata: { user: "ada" } }, // i % 3 == 0: 20
      { metadata: { source: ["chat", "mail"] } }, // i % 4 in {0, 1}: 30
      { metadata: { user: ["bob", "cy"], source: "web" } }, // 10
      { tags_all: ["odd"], tags_any: ["three", "five"], tags_none: ["five"], metadata: { user: "ada", source: ["mail", "sms"] } }, // i in {3, 9, 21, 27, 33, 39, 51, 57}: 8
      { tags_all: ["even", "odd"] }, // none
      { metadata: { user: "nobody" } }, // none
      { tags_any: [] }, // ignored when empty: all 60
      {}, // the empty filter: all 60
    ];
    for (const filter of cases) {
      const matching = episodes.filter((e) => matches(filter, e)).map((e) => e.id);
      const expectedRanked = ranked.filter((id) => matching.includes(id));
      assert.equal(expectedRanked.length, matching.length);
      for (const k of [1, 5, 25, 100]) {
        const what = `filter ${JSON.stringify(filter)}, k ${k} (${matching.length} matching)`;
        const r = await c.recall({ embedding: q, max_results: k, ef_search: 512, filter });
        const ids = r.memories.map((m) => m.episode.id);
        assert.equal(ids.length, Math.min(k, matching.length), what);
        assert.equal(new Set(ids).size, ids.length, `${what}: duplicates ${ids}`);
        for (const m of r.memories) {
          assert.ok(matching.includes(m.episode.id), `${what}: ${m.episode.id} does not match`);
          // The episode comes back with its tags and metadata.
          assert.deepEqual([...m.episode.tags].sort(), [...byId.get(m.episode.id).tags].sort(), what);
          assert.deepEqual(m.episode.metadata, byId.get(m.episode.id).metadata, what);
        }
        // The best k of the matching memories (the filter is applied inside the search).
        assert.deepEqual([...ids].sort(), expectedRanked.slice(0, k).sort(), what);
      }
    }
  });

  it("filters apply to every batch of recallStream", async () => {
    const { c, episodes } = await seeded(40, "batches");
    const filter = { tags_any: ["three", "five"], metadata: { source: ["chat", "web", "sms"] } };
    const matching = episodes.filter((e) => matches(filter, e)).map((e) => e.id);
    assert.ok(matching.length > 6, `${matching.length} matching`);
    const batches = [];
    for await (const b of c.recallStream({ embedding: vector(DIM, 3, true), max_results: 100, filter }, { batchSize: 3 })) batches.push(b);
    assert.equal(batches.length, Math.ceil(matching.length / 3));
    assert.deepEqual(batches.map((b) => b.more), [...Array(batches.length - 1).fill(true), false]);
    const ids = batches.flatMap((b) => b.memories.map((m) => m.episode.id));
    assert.deepEqual([...ids].sort(), [...matching].sort());
  });

  it("memories not yet indexed are filtered too, and a filtered recall reads right after the ack", async () => {
    const space = newSpace("unindexed");
    await server.createSpace(space, DIM);
    const c = client(space);
    assert.equal(await server.post("/v1/admin/indexing/pause"), 200);
    try {
      const episodes = Array.from({ length: 30 }, (_, i) => tagged(i, "u"));
      for (const e of episodes) {
        assert.equal((await c.observe(e)).status, "accepted");
        // Read-after-ack: the memory just acked is found through its own tags and metadata.
        const r = await c.recall({ embedding: e.embedding, max_results: 1, filter: { tags_all: e.tags, metadata: { n: e.metadata.n } } });
        assert.deepEqual(r.memories.map((m) => m.episode.id), [e.id]);
      }
      const filter = { tags_all: ["even"], metadata: { user: ["ada", "cy"] } };
      const matching = episodes.filter((e) => matches(filter, e)).map((e) => e.id);
      const r = await c.recall({ embedding: vector(DIM, 1, true), max_results: 7, filter });
      assert.equal(r.memories.length, Math.min(7, matching.length));
      assert.ok(r.memories.every((m) => matching.includes(m.episode.id)), JSON.stringify(r.memories.map((m) => m.episode.id)));
      assert.ok(r.memories.some((m) => m.indexed === false), "the indexer is paused: memories come from the not-yet-indexed tier");
      const all = await c.recall({ embedding: vector(DIM, 1, true), max_results: 100, filter });
      assert.deepEqual(all.memories.map((m) => m.episode.id).sort(), [...matching].sort());
    } finally {
      assert.equal(await server.post("/v1/admin/indexing/resume"), 200);
    }
    // Once indexed, the same filtered recall finds the same memories.
    const filter = { tags_all: ["even"], metadata: { user: ["ada", "cy"] } };
    const expected = Array.from({ length: 30 }, (_, i) => tagged(i, "u")).filter((e) => matches(filter, e)).map((e) => e.id).sort();
    await until(
      async () => {
        const r = await c.recall({ embedding: vector(DIM, 1, true), max_results: 100 });
        return r.memories.length === 30 && r.memories.every((m) => m.indexed);
      },
      { timeoutMs: 20_000, what: "every memory indexed" },
    );
    const after = await c.recall({ embedding: vector(DIM, 1, true), max_results: 100, filter });
    assert.ok(after.memories.every((m) => m.indexed));
    assert.deepEqual(after.memories.map((m) => m.episode.id).sort(), expected);
  });

  it("a bad filter fails that recall with invalid_argument naming the field; the stream goes on", async () => {
    const { c, space, episodes } = await seeded(12, "bad");
    const q = vector(DIM, 1, true);
    const refused = async (filter, field, pattern) => {
      await assert.rejects(c.recall({ embedding: q, max_results: 5, filter }), (e) => {
        assert.ok(e instanceof ServerError, String(e));
        assert.equal(e.code, "invalid_argument", e.message);
        assert.ok(e.serverMessage.includes(field), `${JSON.stringify(filter)}: ${e.serverMessage}`);
        if (pattern) assert.match(e.serverMessage, pattern);
        assert.ok(e.requestId?.length > 0, "the error answers the recall (request_id)");
        assert.equal(e.fatal, false);
        return true;
      });
    };
    await refused({ tags_all: [""] }, "cue.filter.tags_all");
    await refused({ tags_all: ["even"], tags_none: ["ok", ""] }, "cue.filter.tags_none");
    await refused({ metadata: { user: [] } }, "cue.filter.metadata", /key 'user' has no values/);
    await refused({ tags_any: Array.from({ length: 257 }, (_, i) => `t${i}`) }, "cue.filter", /the limit is 256/);
    // The same stream goes on: an observation is accepted, and filtered recalls work.
    assert.equal(c.state, "open");
    const ack = await c.observe({ ...tagged(100, "bad"), tags: ["even", "late"] });
    assert.equal(ack.status, "accepted");
    const late = await c.recall({ embedding: q, max_results: 5, filter: { tags_all: ["late"] } });
    assert.deepEqual(late.memories.map((m) => m.episode.id), ["bad-100"]);
    const even = await c.recall({ embedding: q, max_results: 100, filter: { tags_all: ["even"] } });
    const expected = [...episodes.filter((e) => e.tags.includes("even")).map((e) => e.id), "bad-100"].sort();
    assert.deepEqual(even.memories.map((m) => m.episode.id).sort(), expected);
    assert.equal(c.stats.reconnects, 0);
    assert.equal(await server.spaceCount(space), 13);
  });
});
