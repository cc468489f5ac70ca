// End-to-end tests of recency-weighted recall (cue.recency_half_life_seconds:
// score = similarity x 0.5^(age / half-life)) through engram-client against
// a real `engram serve` started here (ENGRAM_BIN, default target/ci/engram):
// free ports, temp data dir, fault injection on (to pause the indexer).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { EngramWebSocketClient, ServerError } from "../dist/index.js";
import { EngramServer, until } from "./helpers/server.mjs";

const DIM = 8;
const DAY = 86_400;
const WEEK = 7 * DAY;
let spaceCounter = 0;
const newSpace = (p = "r") => `${p}-${process.pid}-${++spaceCounter}`;

/** The cue: the first axis. */
const CUE = [1, 0, 0, 0, 0, 0, 0, 0];
/** `[1, x, 0...]`: cosine with the cue 1/sqrt(1 + x^2), lower as x grows. */
const leaning = (x) => [1, x, 0, 0, 0, 0, 0, 0];
const daysAgo = (d) => new Date(Date.now() - d * DAY * 1000).toISOString();

/**
 * Three versions of one fact: the oldest (90 days) is the most similar to
 * the cue (~0.999), then 30 days (~0.958), the newest (1 day) the least
 * (~0.857). With a 7-day half-life their scores are ~0.00013, ~0.049 and
 * ~0.78: the newest first, the oldest last.
 */
function versions(prefix) {
  return [
    { id: `${prefix}-90d`, what: "Ada lives in London", when: daysAgo(90), embedding: leaning(0.05), tags: ["fact"], ageDays: 90 },
    { id: `${prefix}-30d`, what: "Ada lives in Paris", when: daysAgo(30), embedding: leaning(0.3), tags: ["fact"], ageDays: 30 },
    { id: `${prefix}-1d`, what: "Ada lives in Berlin", when: daysAgo(1), embedding: leaning(0.6), tags: ["fact"], ageDays: 1 },
  ];
}
const episodeOf = ({ ageDays, ...e }) => e;

describe("recency-weighted recall against a real server", () => {
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

  /** Observes the three versions into a new space; returns the client and them. */
  async function seeded(prefix) {
    const space = newSpace(prefix);
    await server.createSpace(space, DIM);
    const c = client(space);
    const vs = versions(prefix);
    for (const v of vs) assert.equal((await c.observe(episodeOf(v))).status, "accepted");
    return { c, space, vs };
  }

  /** The two recalls of the contract, on whichever tier holds the memories now. */
  async function checkRanking(c, vs, what) {
    const [oldest, middle, newest] = vs.map((v) => v.id);
    // Without recency: by similarity, the oldest first; score == similarity, weight 1.
    const plain = await c.recall({ embedding: CUE, max_results: 3 });
    assert.deepEqual(plain.memories.map((m) => m.episode.id), [oldest, middle, newest], `${what}: without recency`);
    for (const m of plain.memories) {
      assert.equal(m.recency_weight, 1, `${what}: ${m.episode.id}`);
      assert.equal(m.score, m.similarity, `${what}: ${m.episode.id}`);
    }
    const sims = plain.memories.map((m) => m.similarity);
    assert.ok(sims[0] > sims[1] && sims[1] > sims[2], `${what}: similarities ${sims}`);

    // A 7-day half-life: the newest first.
    const recent = await c.recall({ embedding: CUE, max_results: 3, recency_half_life_seconds: WEEK });
    assert.deepEqual(recent.memories.map((m) => m.episode.id), [newest, middle, oldest], `${what}: with recency`);
    const byId = new Map(vs.map((v) => [v.id, v]));
    for (const m of recent.memories) {
      const label = `${what}: ${m.episode.id} ${JSON.stringify({ similarity: m.similarity, score: m.score, recency_weight: m.recency_weight })}`;
      assert.ok(m.recency_weight > 0 && m.recency_weight < 1, label);
      assert.ok(Math.abs(m.score - m.similarity * m.recency_weight) <= 1e-6, label);
      // The same similarity as without recency; the weight is 0.5^(age / half-life) (age: a few seconds more than ageDays).
      assert.ok(Math.abs(m.similarity - sims[plain.memories.findIndex((p) => p.episode.id === m.episode.id)]) <= 1e-6, label);
      const expected = 0.5 ** ((byId.get(m.episode.id).ageDays * DAY) / WEEK);
      assert.ok(Math.abs(m.recency_weight / expected - 1) < 1e-3, `${label}: expected weight ~${expected}`);
    }
    const scores = recent.memories.map((m) => m.score);
    assert.ok(scores[0] > scores[1] && scores[1] > scores[2], `${what}: scores ${scores}`);

    // recallStream: every batch in score order.
    const batches = [];
    for await (const b of c.recallStream({ embedding: CUE, max_results: 3, recency_half_life_seconds: WEEK }, { batchSize: 1 })) batches.push(b);
    assert.deepEqual(batches.map((b) => b.memories.map((m) => m.episode.id)), [[newest], [middle], [oldest]], `${what}: batches`);
  }

  it("without recency the oldest (most similar) version comes first; with a 7-day half-life the newest, score == similarity x recency_weight", async () => {
    const { c, vs } = await seeded("rank");
    await checkRanking(c, vs, "just observed");
    // With a filter too (the weighting applies to filtered recalls).
    const filtered = await c.recall({ embedding: CUE, max_results: 2, recency_half_life_seconds: WEEK, filter: { tags_all: ["fact"] } });
    assert.deepEqual(filtered.memories.map((m) => m.episode.id), [vs[2].id, vs[1].id]);
    // A half-life of 100 years (the most allowed): the weights all but 1, similarity ranks again.
    const century = await c.recall({ embedding: CUE, max_results: 3, recency_half_life_seconds: 100 * 365.25 * DAY });
    assert.deepEqual(century.memories.map((m) => m.episode.id), vs.map((v) => v.id));
    assert.ok(century.memories.every((m) => m.recency_weight > 0.99 && m.recency_weight <= 1));
  });

  it("the same ranking for memories not yet indexed (indexer paused) and once indexed", async () => {
    const space = newSpace("tiers");
    await server.createSpace(space, DIM);
    const c = client(space);
    const vs = versions("tiers");
    assert.equal(await server.post("/v1/admin/indexing/pause"), 200);
    try {
      for (const v of vs) assert.equal((await c.observe(episodeOf(v))).status, "accepted");
      const r = await c.recall({ embedding: CUE, max_results: 3, recency_half_life_seconds: WEEK });
      assert.ok(r.memories.every((m) => m.indexed === false), "the indexer is paused: memories come from the not-yet-indexed tier");
      await checkRanking(c, vs, "not indexed");
    } finally {
      assert.equal(await server.post("/v1/admin/indexing/resume"), 200);
    }
    await until(
      async () => {
        const r = await c.recall({ embedding: CUE, max_results: 3 });
        return r.memories.length === 3 && r.memories.every((m) => m.indexed);
      },
      { timeoutMs: 20_000, what: "every memory indexed" },
    );
    await checkRanking(c, vs, "indexed");
  });

  it("a bad half-life fails that recall with invalid_argument naming cue.recency_half_life_seconds; the stream goes on", async () => {
    const { c, space, vs } = await seeded("bad");
    const refused = async (halfLife) => {
      await assert.rejects(c.recall({ embedding: CUE, max_results: 3, recency_half_life_seconds: halfLife }), (e) => {
        assert.ok(e instanceof ServerError, String(e));
        assert.equal(e.code, "invalid_argument", e.message);
        assert.ok(e.serverMessage.includes("cue.recency_half_life_seconds"), `${halfLife}: ${e.serverMessage}`);
        assert.ok(e.requestId?.length > 0, "the error answers the recall (request_id)");
        assert.equal(e.fatal, false);
        return true;
      });
    };
    await refused(-5);
    await refused(0);
    await refused(101 * 365.25 * DAY); // over 100 years
    // The same stream goes on: an observation is accepted, and recalls (with recency) work.
    assert.equal(c.state, "open");
    const today = { id: "bad-now", what: "Ada lives in Rome", when: new Date().toISOString(), embedding: leaning(0.7), tags: ["fact"] }; // ~0.819: below the 1-day version by similarity, above it by score (~0.776)
    assert.equal((await c.observe(today)).status, "accepted");
    const r = await c.recall({ embedding: CUE, max_results: 4, recency_half_life_seconds: WEEK });
    assert.deepEqual(r.memories.map((m) => m.episode.id), ["bad-now", vs[2].id, vs[1].id, vs[0].id]);
    const plain = await c.recall({ embedding: CUE, max_results: 4 });
    assert.deepEqual(plain.memories.map((m) => m.episode.id), [...vs.map((v) => v.id), "bad-now"]);
    assert.equal(c.stats.reconnects, 0);
    assert.equal(await server.spaceCount(space), 4);
  });
});
