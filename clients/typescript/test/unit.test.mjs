// Unit tests of the pure logic (no server): numbering, retries, resume,
// pacing, backoff (mirrors crates/engram-client's unit tests); and the API
// key / TLS handling of the client against a scripted fake WebSocket.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { inspect } from "node:util";

import {
  Backoff,
  backoffDelay,
  ConnectionError,
  EngramWebSocketClient,
  ObservationRejectedError,
  Outstanding,
  Pacer,
  parseServerMessage,
  PermissionDeniedError,
  ServerError,
  TlsCertificateError,
  UnauthenticatedError,
  uuid,
} from "../dist/index.js";

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
  it("an accepted answer carries the cluster's consistency token, when the ack has one", () => {
    const o = pushed(2);
    sendAll(o);
    o.onAck({ ...accepted(1, 10), token: { partition: 3, sequence: 77 } }, 0);
    o.onAck(accepted(2, 11), 0);
    const [withToken, without] = answers(o);
    assert.deepEqual(withToken.token, { partition: 3, sequence: 77 });
    assert.equal(without.token, undefined);
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

/**
 * A scripted stand-in for a WebSocket class: records the constructor's
 * arguments and the messages sent; `script(socket, n)` plays the server
 * (n: 1 for the first socket, 2 for the second...). By default the server
 * opens, answers `init` with `init_ack` and `close` with `closed`.
 */
function fakeWebSocket(script = (s) => s.open()) {
  const made = [];
  class Fake {
    constructor(...args) {
      this.args = args;
      this.readyState = 0;
      this.bufferedAmount = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.sent = [];
      this.onClientMessage = (m) => {
        if (m.type === "init") this.reply({ type: "init_ack", session_id: `s${made.length}`, last_acked_sequence: 0, capabilities: { queue_capacity: 8, dimension: 2, max_message_size: 1 << 20 } });
        if (m.type === "close") {
          this.reply({ type: "closed", final_sequence: 0, accepted: 0, rejected: 0 });
          this.serverClose(1000);
        }
      };
      made.push(this);
      const n = made.length;
      setTimeout(() => script(this, n), 0);
    }
    send(d) {
      const m = JSON.parse(d);
      this.sent.push(m);
      setTimeout(() => this.onClientMessage(m), 0);
    }
    close(code = 1000) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason: "" }), 0);
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    reply(m) {
      if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(m) });
    }
    fail(message, error) {
      this.onerror?.({ type: "error", message, error });
      this.serverClose(1006);
    }
    serverClose(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { Fake, made };
}

const KEY = "ek_test_0123456789abcdefSECRET";
const fastReconnect = { initialMs: 1, maxMs: 5, maxAttempts: 5 };

describe("API key and TLS (a fake WebSocket, no server)", () => {
  async function connected(opts) {
    const { Fake, made } = fakeWebSocket();
    const c = new EngramWebSocketClient("wss://engram.test/v1/stream", { space: "s", WebSocket: Fake, ...opts });
    await c.connect();
    await c.close({ drain: false });
    return made;
  }

  it("sends the key as the subprotocols engram.v1 + bearer.<key> by default, not in init", async () => {
    const [ws] = await connected({ apiKey: KEY });
    assert.deepEqual(ws.args, ["wss://engram.test/v1/stream", ["engram.v1", `bearer.${KEY}`]]);
    const init = ws.sent.find((m) => m.type === "init");
    assert.equal(init.api_key, undefined);
  });
  it("apiKeyTransport 'init' sends the key as init.api_key and no subprotocol", async () => {
    const [ws] = await connected({ apiKey: "key/with=chars", apiKeyTransport: "init" });
    assert.deepEqual(ws.args, ["wss://engram.test/v1/stream"]);
    assert.equal(ws.sent.find((m) => m.type === "init").api_key, "key/with=chars");
  });
  it("without key or tls the constructor gets the url only (as before)", async () => {
    const [ws] = await connected({});
    assert.deepEqual(ws.args, ["wss://engram.test/v1/stream"]);
    assert.equal(ws.sent[0].api_key, undefined);
  });
  it("tls options go to the constructor's third argument", async () => {
    const [a] = await connected({ tls: { ca: "PEM", rejectUnauthorized: true } });
    assert.deepEqual(a.args, ["wss://engram.test/v1/stream", [], { ca: "PEM", rejectUnauthorized: true }]);
    const [b] = await connected({ apiKey: KEY, tls: { ca: "PEM" } });
    assert.deepEqual(b.args, ["wss://engram.test/v1/stream", ["engram.v1", `bearer.${KEY}`], { ca: "PEM" }]);
    // CA bytes (a Buffer from readFileSync) go as PEM text.
    const [c] = await connected({ tls: { ca: [Buffer.from("PEM-1"), new TextEncoder().encode("PEM-2")] } });
    assert.deepEqual(c.args[2], { ca: ["PEM-1", "PEM-2"] });
  });
  it("rejects a key a subprotocol cannot carry, without echoing it", () => {
    for (const apiKey of ["has space", "a/b=", "ключ"]) {
      assert.throws(
        () => new EngramWebSocketClient("ws://x/v1/stream", { space: "s", apiKey }),
        (e) => e instanceof TypeError && /apiKeyTransport: "init"/.test(e.message) && !e.message.includes(apiKey),
      );
    }
    assert.throws(() => new EngramWebSocketClient("ws://x/v1/stream", { space: "s", apiKey: "" }), TypeError);
    assert.throws(() => new EngramWebSocketClient("ws://x/v1/stream", { space: "s", apiKey: "k", apiKeyTransport: "header" }), TypeError);
  });
  it("keeps the key out of client.options and util.inspect", () => {
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", apiKey: KEY });
    assert.equal(c.options.apiKeyTransport, "subprotocol");
    assert.ok(!JSON.stringify(c.options).includes(KEY));
    assert.ok(!inspect(c, { depth: 10, showHidden: true }).includes(KEY));
  });

  /** Connects with `script` playing the server; returns the failure, the sockets made and the reconnect events. */
  async function failing(script, opts = {}) {
    const { Fake, made } = fakeWebSocket(script);
    const c = new EngramWebSocketClient("wss://engram.test/v1/stream", { space: "s", WebSocket: Fake, reconnect: fastReconnect, ...opts });
    const reconnecting = [];
    c.on("reconnecting", (e) => reconnecting.push(e));
    const error = await c.connect().then(
      () => assert.fail("connect() resolved"),
      (e) => e,
    );
    assert.equal(c.state, "failed");
    await assert.rejects(c.observe({ embedding: [1, 0] }), (e) => e === error);
    return { error, made, reconnecting };
  }

  it("an upgrade refused with HTTP 401 is UnauthenticatedError, final (no reconnect), key not in the message", async () => {
    const { error, made, reconnecting } = await failing(
      (s) => s.fail("Unexpected server response: 401", new Error("Unexpected server response: 401")),
      { apiKey: KEY },
    );
    assert.ok(error instanceof UnauthenticatedError, String(error));
    assert.ok(error instanceof ServerError);
    assert.equal(error.kind, "unauthenticated");
    assert.equal(error.code, "unauthenticated");
    assert.equal(error.httpStatus, 401);
    assert.match(error.message, /refused the API key \(HTTP 401/);
    assert.ok(!error.message.includes(KEY));
    assert.equal(made.length, 1);
    assert.equal(reconnecting.length, 0);
  });
  it("a 401 without a key says to set options.apiKey", async () => {
    const { error } = await failing((s) => s.fail("Unexpected server response: 401"));
    assert.ok(error instanceof UnauthenticatedError);
    assert.match(error.message, /set options\.apiKey/);
  });
  it("other refused upgrades (503) stay transient: retried", async () => {
    const { error, made, reconnecting } = await failing((s) => s.fail("Unexpected server response: 503"));
    assert.ok(error instanceof ConnectionError && !(error instanceof TlsCertificateError), String(error));
    assert.match(error.message, /gave up after 5 reconnect attempts.*503/);
    assert.equal(made.length, 6);
    assert.equal(reconnecting.length, 5);
  });
  it("the server's error 'unauthenticated' after init is UnauthenticatedError, final", async () => {
    const { error, made, reconnecting } = await failing((s) => {
      s.onClientMessage = (m) => {
        if (m.type !== "init") return;
        s.reply({ type: "error", code: "unauthenticated", message: "no API key", fatal: true });
        s.serverClose(1008);
      };
      s.open();
    });
    assert.ok(error instanceof UnauthenticatedError, String(error));
    assert.equal(error.serverMessage, "no API key");
    assert.equal(error.httpStatus, undefined);
    assert.equal(made.length, 1);
    assert.equal(reconnecting.length, 0);
  });
  it("the same error without the fatal flag, then close 1008, is final too", async () => {
    const { error, made } = await failing((s) => {
      s.onClientMessage = (m) => {
        if (m.type !== "init") return;
        s.reply({ type: "error", code: "unauthenticated", message: "unknown key" });
        s.serverClose(1008);
      };
      s.open();
    }, { apiKey: KEY, apiKeyTransport: "init" });
    assert.ok(error instanceof UnauthenticatedError, String(error));
    assert.equal(made.length, 1);
  });
  it("an untrusted server certificate is TlsCertificateError, final, pointing at tls.ca", async () => {
    const cause = Object.assign(new Error("unable to get local issuer certificate"), { code: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" });
    const { error, made, reconnecting } = await failing((s) => s.fail(cause.message, cause));
    assert.ok(error instanceof TlsCertificateError, String(error));
    assert.ok(error instanceof ConnectionError);
    assert.equal(error.certificateCode, "UNABLE_TO_GET_ISSUER_CERT_LOCALLY");
    assert.match(error.message, /options\.tls = \{ ca:/);
    assert.equal(made.length, 1);
    assert.equal(reconnecting.length, 0);
  });
  it("a constructor error that quotes the key is redacted", async () => {
    const { Fake } = fakeWebSocket();
    class Throwing extends Fake {
      constructor(url, protocols) {
        throw new SyntaxError(`The subprotocol '${protocols[1]}' is invalid.`);
      }
    }
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Throwing, apiKey: KEY, reconnect: false });
    const e = await c.connect().then(() => assert.fail("resolved"), (x) => x);
    assert.ok(e instanceof ConnectionError);
    assert.match(e.message, /bearer\.<api key>/);
    assert.ok(!e.message.includes(KEY));
    assert.ok(!inspect(e, { depth: 10 }).includes(KEY), "the cause (which quotes the key) is not attached");
  });
  it("an ack rejected 'unauthorized' is a final rejection (not resent), the stream goes on", async () => {
    const { Fake, made } = fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type === "observation") {
          if (m.episode.id === "denied") s.reply({ type: "ack", sequence_number: m.sequence_number, status: "rejected", reason: "unauthorized", message: "key 'r' has no write on space 's'" });
          else s.reply({ type: "ack", sequence_number: m.sequence_number, status: "accepted", memory_id: m.episode.id, server_sequence: 1, committed_at: "2026-01-01T00:00:00Z" });
        } else base(m);
      };
      s.open();
    });
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake, apiKey: KEY });
    await assert.rejects(c.observe({ id: "denied", embedding: [1, 0] }), (e) => {
      assert.ok(e instanceof ObservationRejectedError);
      assert.equal(e.reason, "unauthorized");
      assert.equal(e.retries, 0);
      assert.match(e.serverMessage, /no write/);
      return true;
    });
    const ok = await c.observe({ id: "fine", embedding: [1, 0] });
    assert.equal(ok.status, "accepted");
    assert.equal(ok.wire_sequence_number, 2);
    assert.deepEqual(made[0].sent.filter((m) => m.type === "observation").map((m) => m.episode.id), ["denied", "fine"]);
    assert.equal(c.stats.retries, 0);
    assert.equal(made.length, 1);
    await c.close();
  });
  it("a recall answered 'permission_denied' throws PermissionDeniedError, the stream goes on", async () => {
    const { Fake, made } = fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type === "recall") {
          if (m.memory_space_id === "secret") s.reply({ type: "error", code: "permission_denied", message: "no read on 'secret'", request_id: m.request_id });
          else s.reply({ type: "recall_result", request_id: m.request_id, memories: [], more: false, snapshot_sequence: 0 });
        } else base(m);
      };
      s.open();
    });
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake, apiKey: KEY });
    await assert.rejects(c.recall({ embedding: [1, 0] }, { memorySpaceId: "secret" }), (e) => {
      assert.ok(e instanceof PermissionDeniedError, String(e));
      assert.ok(e instanceof ServerError);
      assert.equal(e.code, "permission_denied");
      assert.equal(e.kind, "permission_denied");
      return true;
    });
    assert.equal((await c.recall({ embedding: [1, 0] })).batches, 1);
    assert.equal(c.state, "open");
    assert.equal(made.length, 1);
    await c.close();
  });
});

describe("recall filter (a fake WebSocket, no server)", () => {
  /** A server that answers every recall with an empty result; the recall messages it got are in `made[0].sent`. */
  function recallServer() {
    return fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type === "recall") s.reply({ type: "recall_result", request_id: m.request_id, memories: [], more: false, snapshot_sequence: 0 });
        else base(m);
      };
      s.open();
    });
  }

  it("cue.filter goes on the wire as the server's JSON (snake_case, metadata string = equals, list = in), the cue unchanged", async () => {
    const { Fake, made } = recallServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    const filter = { tags_all: ["work", "urgent"], tags_any: ["a", "b"], tags_none: ["draft"], metadata: { user: "ada", source: ["chat", "mail"] } };
    const cue = { embedding: [1, 0], max_results: 3, ef_search: 64, filter };
    const before = structuredClone(cue);
    assert.equal((await c.recall(cue)).batches, 1);
    await c.recall({ embedding: [0, 1], filter: { tags_any: ["x"] } }, { batchSize: 2 });
    await c.recall({ embedding: [0, 1] });
    await c.close();
    const recalls = made[0].sent.filter((m) => m.type === "recall");
    assert.equal(recalls.length, 3);
    assert.deepEqual(recalls[0].cue, {
      embedding: [1, 0],
      max_results: 3,
      ef_search: 64,
      filter: { tags_all: ["work", "urgent"], tags_any: ["a", "b"], tags_none: ["draft"], metadata: { user: "ada", source: ["chat", "mail"] } },
    });
    assert.deepEqual(recalls[1].cue, { embedding: [0, 1], filter: { tags_any: ["x"] } });
    assert.equal(recalls[1].batch_size, 2);
    assert.equal("filter" in recalls[2].cue, false, "no filter: no filter field on the wire");
    assert.deepEqual(cue, before, "the caller's cue is not changed");
  });

  it("a recall refused for its filter throws ServerError invalid_argument, the stream goes on", async () => {
    const { Fake, made } = fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type !== "recall") return base(m);
        if (m.cue.filter?.tags_all?.includes("")) s.reply({ type: "error", code: "invalid_argument", message: "cue.filter.tags_all has an empty tag", request_id: m.request_id });
        else s.reply({ type: "recall_result", request_id: m.request_id, memories: [], more: false, snapshot_sequence: 0 });
      };
      s.open();
    });
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    await assert.rejects(c.recall({ embedding: [1, 0], filter: { tags_all: [""] } }), (e) => {
      assert.ok(e instanceof ServerError, String(e));
      assert.equal(e.code, "invalid_argument");
      assert.match(e.serverMessage, /cue\.filter\.tags_all/);
      assert.ok(e.requestId?.length > 0);
      return true;
    });
    assert.equal((await c.recall({ embedding: [1, 0], filter: { tags_all: ["ok"] } })).batches, 1);
    assert.equal(c.state, "open");
    assert.equal(made.length, 1);
    await c.close();
  });
});

describe("recall recency (a fake WebSocket, no server)", () => {
  const DAY = 86_400;
  /** Plays a server that ranks three stored memories by similarity x 0.5^(age / half-life), and refuses a bad half-life. */
  function recencyServer() {
    const now = Date.parse("2026-03-01T00:00:00Z");
    const stored = [
      { id: "old", ageDays: 90, similarity: 0.99 },
      { id: "mid", ageDays: 30, similarity: 0.95 },
      { id: "new", ageDays: 1, similarity: 0.9 },
    ];
    return fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type !== "recall") return base(m);
        const h = m.cue.recency_half_life_seconds;
        if (h !== undefined && !(h > 0 && h <= 100 * 365.25 * DAY)) {
          s.reply({ type: "error", code: "invalid_argument", message: `cue.recency_half_life_seconds: is ${h}; expected more than 0 and at most 3155760000 (100 years), or unset`, request_id: m.request_id });
          return;
        }
        const memories = stored
          .map((e, i) => {
            const recency_weight = h === undefined ? 1 : 0.5 ** ((e.ageDays * DAY) / h);
            return {
              episode: { id: e.id, when: new Date(now - e.ageDays * DAY * 1000).toISOString() },
              similarity: e.similarity,
              score: e.similarity * recency_weight,
              recency_weight,
              confidence: 1,
              server_sequence: i + 1,
              indexed: true,
            };
          })
          .sort((a, b) => b.score - a.score);
        s.reply({ type: "recall_result", request_id: m.request_id, memories, more: false, snapshot_sequence: 3 });
      };
      s.open();
    });
  }

  it("cue.recency_half_life_seconds goes on the wire as is (absent when not set); score and recency_weight come back", async () => {
    const { Fake, made } = recencyServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    const cue = { embedding: [1, 0], max_results: 3, recency_half_life_seconds: 7 * DAY, filter: { tags_all: ["fact"] } };
    const before = structuredClone(cue);
    const plain = await c.recall({ embedding: [1, 0], max_results: 3 });
    assert.deepEqual(plain.memories.map((m) => m.episode.id), ["old", "mid", "new"]);
    for (const m of plain.memories) {
      assert.equal(m.recency_weight, 1);
      assert.equal(m.score, m.similarity);
    }
    const recent = await c.recall(cue);
    assert.deepEqual(recent.memories.map((m) => m.episode.id), ["new", "mid", "old"]);
    for (const m of recent.memories) {
      assert.ok(m.recency_weight > 0 && m.recency_weight < 1, `${m.episode.id}: ${m.recency_weight}`);
      assert.ok(Math.abs(m.score - m.similarity * m.recency_weight) < 1e-6);
    }
    await c.close();
    const recalls = made[0].sent.filter((m) => m.type === "recall");
    assert.equal("recency_half_life_seconds" in recalls[0].cue, false, "not set: not on the wire");
    assert.deepEqual(recalls[1].cue, { embedding: [1, 0], max_results: 3, recency_half_life_seconds: 604800, filter: { tags_all: ["fact"] } });
    assert.deepEqual(cue, before, "the caller's cue is not changed");
  });

  it("a recall refused for its half-life throws ServerError invalid_argument naming the field, the stream goes on", async () => {
    const { Fake, made } = recencyServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    for (const bad of [-5, 0, 200 * 365.25 * DAY]) {
      await assert.rejects(c.recall({ embedding: [1, 0], recency_half_life_seconds: bad }), (e) => {
        assert.ok(e instanceof ServerError, String(e));
        assert.equal(e.code, "invalid_argument");
        assert.match(e.serverMessage, /cue\.recency_half_life_seconds/);
        assert.ok(e.requestId?.length > 0);
        assert.equal(e.fatal, false);
        return true;
      });
    }
    const ok = await c.recall({ embedding: [1, 0], recency_half_life_seconds: DAY });
    assert.equal(ok.memories[0].episode.id, "new");
    assert.equal(c.state, "open");
    assert.equal(made.length, 1);
    await c.close();
  });
});

describe("episode expiry (a fake WebSocket, no server)", () => {
  /**
   * Plays a server that checks expiry like engram's: at most one of
   * expires_at / ttl_seconds, expires_at in the future, 0 < ttl <= 100
   * years; stores accepted episodes with their expires_at and recalls them.
   */
  function expiryServer() {
    const stored = [];
    const MAX_TTL = 3_155_760_000;
    return fakeWebSocket((s) => {
      const base = s.onClientMessage;
      s.onClientMessage = (m) => {
        if (m.type === "observation") {
          const e = m.episode;
          const reject = (message) => s.reply({ type: "ack", sequence_number: m.sequence_number, status: "rejected", reason: "invalid", message });
          if (e.expires_at !== undefined && e.ttl_seconds !== undefined) return reject("episode.expires_at and episode.ttl_seconds: at most one of the two");
          if (e.expires_at !== undefined && !(Date.parse(e.expires_at) > Date.now())) return reject(`episode.expires_at: ${e.expires_at} is not in the future`);
          if (e.ttl_seconds !== undefined && !(e.ttl_seconds > 0 && e.ttl_seconds <= MAX_TTL)) return reject(`episode.ttl_seconds: is ${e.ttl_seconds}`);
          const expires_at = e.ttl_seconds !== undefined ? new Date(Date.now() + e.ttl_seconds * 1000).toISOString() : e.expires_at;
          const { ttl_seconds, ...kept } = e;
          stored.push({ ...kept, ...(expires_at ? { expires_at } : {}) });
          s.reply({ type: "ack", sequence_number: m.sequence_number, status: "accepted", memory_id: e.id, server_sequence: stored.length, committed_at: new Date().toISOString() });
        } else if (m.type === "recall") {
          const memories = stored.map((episode, i) => ({ episode, similarity: 1, score: 1, recency_weight: 1, confidence: 1, server_sequence: i + 1, indexed: true }));
          s.reply({ type: "recall_result", request_id: m.request_id, memories, more: false, snapshot_sequence: stored.length });
        } else base(m);
      };
      s.open();
    });
  }

  it("expires_at (a string as is, a Date as RFC 3339) and ttl_seconds go on the wire unchanged; the caller's episode is not changed", async () => {
    const { Fake, made } = expiryServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    const later = new Date(Date.now() + 3_600_000);
    const asDate = { id: "d", embedding: [1, 0], expires_at: later };
    const asString = { id: "s", embedding: [1, 0], expires_at: "2999-01-01T00:00:00Z" };
    const withTtl = { embedding: [1, 0], ttl_seconds: 90 };
    const plain = { id: "p", embedding: [1, 0] };
    for (const e of [asDate, asString, withTtl, plain]) assert.equal((await c.observe(e)).status, "accepted");
    assert.ok(asDate.expires_at === later && later.getTime() > 0, "the caller's Date is not replaced");
    assert.equal("id" in withTtl, false, "the id went on a copy");
    const sent = made[0].sent.filter((m) => m.type === "observation").map((m) => m.episode);
    assert.deepEqual(sent[0], { id: "d", embedding: [1, 0], expires_at: later.toISOString() });
    assert.deepEqual(sent[1], asString);
    assert.equal(sent[2].ttl_seconds, 90);
    assert.equal("expires_at" in sent[2], false);
    assert.match(sent[2].id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(sent[3], plain, "no expiry: no expiry fields on the wire");
    // Recalled episodes carry expires_at as the server's string; absent when the memory never expires.
    const { memories } = await c.recall({ embedding: [1, 0] });
    const byId = new Map(memories.map((m) => [m.episode.id, m.episode]));
    assert.equal(byId.get("d").expires_at, later.toISOString());
    assert.equal(byId.get("s").expires_at, "2999-01-01T00:00:00Z");
    assert.equal(typeof byId.get(sent[2].id).expires_at, "string");
    assert.equal("ttl_seconds" in byId.get(sent[2].id), false);
    assert.equal("expires_at" in byId.get("p"), false);
    await c.close();
  });

  it("an invalid Date is refused locally (TypeError, nothing sent); the stream goes on", async () => {
    const { Fake, made } = expiryServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    await assert.rejects(c.observe({ id: "nan", embedding: [1, 0], expires_at: new Date(Number.NaN) }), (e) => {
      assert.ok(e instanceof TypeError, String(e));
      assert.match(e.message, /episode\.expires_at/);
      return true;
    });
    assert.equal((await c.observe({ id: "ok", embedding: [1, 0], ttl_seconds: 5 })).status, "accepted");
    assert.deepEqual(made[0].sent.filter((m) => m.type === "observation").map((m) => m.episode.id), ["ok"]);
    await c.close();
  });

  it("the server's invalid rejections (both fields, expires_at in the past, bad ttl) reach the caller; later observations are accepted", async () => {
    const { Fake, made } = expiryServer();
    const c = new EngramWebSocketClient("ws://x/v1/stream", { space: "s", WebSocket: Fake });
    await assert.rejects(c.observe({ id: "both", embedding: [1, 0], expires_at: new Date(Date.now() + 60_000), ttl_seconds: 60 }), (e) => {
      assert.ok(e instanceof ObservationRejectedError, String(e));
      assert.equal(e.reason, "invalid");
      assert.match(e.serverMessage, /episode\.(expires_at|ttl_seconds)/);
      assert.equal(typeof e.episode.expires_at, "string", "the rejected episode is the one sent (expires_at as a string)");
      assert.equal(e.retries, 0);
      return true;
    });
    const results = [];
    for await (const r of c.observeMany([
      { id: "past", embedding: [1, 0], expires_at: new Date(Date.now() - 1000) },
      { id: "neg", embedding: [1, 0], ttl_seconds: -5 },
      { id: "fine", embedding: [1, 0], ttl_seconds: 60 },
    ])) results.push(r);
    assert.deepEqual(results.map((r) => r.status), ["rejected", "rejected", "accepted"]);
    assert.match(results[0].message, /episode\.expires_at/);
    assert.match(results[1].message, /episode\.ttl_seconds/);
    assert.equal(c.state, "open");
    assert.equal(made.length, 1);
    assert.equal(c.stats.retries, 0);
    await c.close();
  });
});
