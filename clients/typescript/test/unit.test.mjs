// Unit tests of the pure logic (no server): numbering, retries, resume,
// pacing, backoff. Mirrors crates/engram-client's unit tests.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Backoff, backoffDelay, Outstanding, Pacer, parseServerMessage, uuid } from "../dist/index.js";

const policy = (maxRetries) => ({ maxRetries, defaultDelayMs: 100, maxDelayMs: 1000 });
const ep = (i) => ({ id: `e${i}`, embedding: [1, 0] });
const accepted = (wire, ss) => ({ type: "ack", sequence_number: wire, status: "accepted", memory_id: `m${ss}`, server_sequence: ss, committed_at: "2026-01-01T00:00:00Z" });
const rejected = (wire, reason, retry_after_ms = 0) => ({ type: "ack", sequence_number: wire, status: "rejected", reason, message: "no", retry_after_ms });
function pushed(n, now = 0, retries = 3) {
  const o = new Outstanding(policy(retries));
  for (let s = 1; s <= n; s++) o.push(s, ep(s), undefined, s, now);
  return o;
}
const sendAll = (o) => {
  const out = [];
  for (let m; (m = o.takeNext()); ) out.push(m.sequence_number);
  return out;
};
const answers = (o) => {
  const out = [];
  for (let a; (a = o.popAnswered()); ) out.push(a[0]);
  return out;
};

describe("Outstanding", () => {
  it("answers in order", () => {
    const o = pushed(3);
    assert.deepEqual(sendAll(o), [1, 2, 3]);
    assert.deepEqual(o.onAck(accepted(1, 10), 0), { kind: "answered" });
    o.onAck(accepted(2, 11), 0);
    const a = answers(o);
    assert.deepEqual(a.map((x) => [x.sequence_number, x.wire_sequence_number, x.server_sequence]), [[1, 1, 10], [2, 2, 11]]);
    assert.equal(o.length, 1);
  });
  it("an ack out of order is a protocol error", () => {
    const o = pushed(2);
    sendAll(o);
    assert.match(o.onAck(accepted(2, 1), 0), /oldest unanswered observation is 1/);
    assert.match(o.onAck(rejected(1, "out_of_order"), 0), /out of order/);
    assert.match(new Outstanding(policy(1)).onAck(accepted(1, 1), 0), /no observation is waiting/);
  });
  it("an overloaded observation is resent under a new number, answers stay in order", () => {
    const o = pushed(3);
    sendAll(o);
    assert.deepEqual(o.onAck(rejected(1, "overloaded", 250), 0), { kind: "retrying", sequenceNumber: 1, retry: 1, delayMs: 250 });
    o.onAck(accepted(2, 1), 0);
    o.onAck(accepted(3, 2), 0);
    assert.deepEqual(answers(o), []);
    assert.equal(o.nextSendAt(), 250);
    const re = o.takeNext();
    assert.equal(re.sequence_number, 4);
    assert.equal(re.episode.id, "e1");
    o.onAck(accepted(4, 3), 0);
    const a = answers(o);
    assert.deepEqual(a.map((x) => x.sequence_number), [1, 2, 3]);
    assert.equal(a[0].wire_sequence_number, 4);
    assert.equal(a[0].retries, 1);
  });
  it("retries are bounded; the last rejection reaches the caller", () => {
    const o = new Outstanding(policy(2));
    o.push(1, ep(1), undefined, 1, 0);
    for (const wire of [1, 2]) {
      assert.equal(o.takeNext().sequence_number, wire);
      assert.equal(o.onAck(rejected(wire, "overloaded", 0), 0).delayMs, 100);
    }
    o.takeNext();
    assert.deepEqual(o.onAck(rejected(3, "overloaded", 40), 0), { kind: "answered" });
    const [r] = answers(o);
    assert.equal(r.reason, "overloaded");
    assert.equal(r.retries, 2);
    assert.equal(r.retry_after_ms, 40);
  });
  it("resume resends the unanswered under the same numbers", () => {
    const o = pushed(5);
    sendAll(o);
    o.onAck(accepted(1, 1), 0);
    o.onAck(accepted(2, 2), 0);
    assert.deepEqual(o.resume(4).map((m) => m.sequence_number), [3, 4, 5]);
    o.push(6, ep(6), undefined, 6, 0);
    assert.equal(o.takeNext().sequence_number, 6);
  });
  it("resume rejects a position it cannot reconcile", () => {
    const o = pushed(3);
    sendAll(o);
    o.onAck(accepted(1, 1), 0);
    assert.match(o.resume(4), /sent only up to 3/);
    assert.match(o.resume(0), /already has answers up to 1/);
    assert.equal(o.resume(1).length, 2);
  });
  it("a lost session renumbers everything from one, in caller order", () => {
    const o = pushed(4);
    sendAll(o);
    o.onAck(accepted(1, 1), 0);
    o.onAck(rejected(2, "overloaded", 500), 0);
    o.restartSession(0);
    assert.equal(o.highestSent, 0);
    assert.equal(o.nextSendAt(), 500);
    const sent = [];
    for (let m; (m = o.takeNext()); ) sent.push([m.sequence_number, m.episode.id]);
    assert.deepEqual(sent, [[1, "e2"], [2, "e3"], [3, "e4"]]);
  });
  it("closing answers what is left with closed", () => {
    const o = pushed(3);
    o.takeNext();
    o.rejectWaiting("closed before it was sent");
    o.onAck(accepted(1, 1), 0);
    const a = answers(o);
    assert.deepEqual(a.map((x) => x.status), ["accepted", "rejected", "rejected"]);
    assert.equal(a[1].reason, "closed");
  });
});

describe("Pacer and Backoff", () => {
  it("paces sends at the rate and credits at most one interval of lateness", () => {
    const p = new Pacer();
    p.onSent(0);
    assert.equal(p.readyAt(), undefined);
    p.setRate(10);
    p.onSent(0);
    assert.equal(p.readyAt(), 100);
    p.onSent(130);
    assert.equal(p.readyAt(), 200);
    p.onSent(1200);
    assert.equal(p.readyAt(), 1300);
    p.setRate(0.01);
    assert.equal(p.rate, 1);
    p.setRate(Number.NaN);
    assert.equal(p.rate, 1);
    p.clear();
    assert.equal(p.readyAt(), undefined);
  });
  it("backoff grows exponentially to the cap, jittered into [0.5, 1], bounded in count", () => {
    const pol = { initialMs: 100, maxMs: 2000, multiplier: 2, maxAttempts: 3 };
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(pol, a, 1)), [100, 200, 400, 800, 1600, 2000]);
    assert.equal(backoffDelay(pol, 2, 0), 200);
    const b = new Backoff(pol, () => 0.5);
    assert.equal(b.next(), 75);
    b.next();
    b.next();
    assert.equal(b.next(), undefined);
    assert.equal(backoffDelay(pol, 1e9, 1), 2000);
  });
  it("parses server messages and ignores unknown ones; makes v4 UUIDs", () => {
    assert.equal(parseServerMessage('{"type":"heartbeat"}').type, "heartbeat");
    assert.equal(parseServerMessage('{"type":"nope"}'), undefined);
    assert.equal(parseServerMessage("[1]"), undefined);
    assert.equal(parseServerMessage("{bad"), undefined);
    assert.match(uuid(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe("public types", () => {
  it("no `any` in dist/*.d.ts", async () => {
    const { readdirSync, readFileSync } = await import("node:fs");
    const dir = new URL("../dist/", import.meta.url);
    const offenders = [];
    for (const f of readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
      readFileSync(new URL(f, dir), "utf8")
        .split("\n")
        .forEach((line, i) => {
          const code = line.replace(/\/\*.*?\*\//g, "").replace(/\/\/.*$/, "").replace(/^\s*\*.*$/, "");
          if (/\bany\b/.test(code)) offenders.push(`${f}:${i + 1}: ${line.trim()}`);
        });
    }
    assert.deepEqual(offenders, []);
  });
});
