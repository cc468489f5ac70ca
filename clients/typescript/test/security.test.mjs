// End-to-end tests of API keys and TLS (issue #12) against a real
// `engram serve` started here with a keys file written by the test (hash =
// "sha256:" + SHA-256 hex of the key) and TLS certificates made by
// `engram tls generate` (a fresh CA, a server certificate for 127.0.0.1).
// The client connects over wss:// trusting that CA (`tls.ca`).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";

import {
  ConnectionError,
  EngramWebSocketClient,
  ObservationRejectedError,
  PermissionDeniedError,
  TlsCertificateError,
  UnauthenticatedError,
} from "../dist/index.js";
import { EngramServer, engramBin, generateTls, hasSecurityFeatures, until, vector, writeKeysFile } from "./helpers/server.mjs";

const DIM = 16;
const episode = (i, extra = {}) => ({ what: `secure observation ${i}`, embedding: vector(DIM, i + 1, true), ...extra });

// Keys (the secrets) and their grants. Subprotocol-safe characters only.
const KEYS = {
  admin: { name: "ts-admin", key: "ts-admin-key-7f3a9c1e5b2d4f60", roles: ["admin"], spaces: ["*"] },
  writer: { name: "ts-writer", key: "ts-writer-key-0a1b2c3d4e5f6789", roles: ["read", "write"], spaces: ["sec-*"] },
  reader: { name: "ts-reader", key: "ts-reader-key-99887766554433aa", roles: ["read"], spaces: ["sec-*"] },
  other: { name: "ts-other", key: "ts-other-key-1234abcd5678ef90", roles: ["read", "write"], spaces: ["other-*"] },
};
const WRONG_KEY = "ts-wrong-key-deadbeefdeadbeef00";

let spaceCounter = 0;
const newSpace = (p) => `${p}-${process.pid}-${++spaceCounter}`;

describe("API keys and TLS against a real server (wss://, keys file)", () => {
  /** @type {EngramServer} */
  let server;
  let dir;
  let tls;
  const clients = [];
  /** A client of the test server; `opts.tls` defaults to trusting the test CA. */
  const client = (space, opts = {}) => {
    const c = new EngramWebSocketClient(server.wsUrl, { space, tls: { ca: tls.caPem }, ...opts });
    clients.push(c);
    return c;
  };
  /** Connects; returns the error it failed with, how long that took, and the reconnect events. */
  const failedConnect = async (c) => {
    const reconnecting = [];
    c.on("reconnecting", (e) => reconnecting.push(e));
    const t0 = performance.now();
    const error = await c.connect().then(
      () => assert.fail("connect() resolved, expected a failure"),
      (e) => e,
    );
    return { error, ms: performance.now() - t0, reconnecting };
  };
  const noKeyIn = (e) => {
    for (const k of [...Object.values(KEYS).map((k) => k.key), WRONG_KEY]) {
      assert.ok(!String(e?.message).includes(k) && !String(e?.stack).includes(k), `the error names a key: ${e?.message}`);
    }
  };

  before(async () => {
    if (!hasSecurityFeatures()) {
      throw new Error(`${engramBin()} has no --api-keys / 'engram tls' (issue #12): rebuild it (cargo build --profile ci -p engram-server)`);
    }
    dir = mkdtempSync(join(tmpdir(), "engram-ts-sec-"));
    tls = generateTls(dir);
    const keysFile = writeKeysFile(join(dir, "keys.toml"), Object.values(KEYS));
    server = await new EngramServer({
      walSync: "always",
      apiKeys: keysFile,
      apiKey: KEYS.admin.key,
      tls: { cert: tls.cert, key: tls.key, caPem: tls.caPem },
    }).start();
    assert.match(server.wsUrl, /^wss:\/\//);
  });
  after(async () => {
    for (const c of clients) await c.close({ drain: false }).catch(() => {});
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("wss with the CA and a read-write key (subprotocol): observe and recall work", async () => {
    const space = newSpace("sec-rw");
    await server.createSpace(space, DIM);
    const sockets = [];
    class Recording extends WebSocket {
      constructor(...args) {
        super(...args);
        sockets.push(this);
      }
    }
    const c = client(space, { apiKey: KEYS.writer.key, WebSocket: Recording });
    const acks = [];
    for (let i = 0; i < 5; i++) acks.push(await c.observe(episode(i, { id: `rw-${i}` })));
    assert.deepEqual(acks.map((a) => a.status), Array(5).fill("accepted"));
    const r = await c.recall({ embedding: vector(DIM, 1, true), max_results: 10 });
    assert.deepEqual(r.memories.map((m) => m.episode.id).sort(), ["rw-0", "rw-1", "rw-2", "rw-3", "rw-4"]);
    assert.equal(r.memories[0].episode.id, "rw-0");
    // The server selected the subprotocol that carries no secret.
    assert.equal(sockets.length, 1);
    assert.equal(sockets[0].protocol, "engram.v1");
    const closed = await c.close();
    assert.equal(closed.accepted, 5);
    assert.equal(await server.spaceCount(space), 5);
  });

  it("the key in init (apiKeyTransport: 'init') works too", async () => {
    const space = newSpace("sec-init");
    await server.createSpace(space, DIM);
    const c = client(space, { apiKey: KEYS.writer.key, apiKeyTransport: "init" });
    assert.equal((await c.observe(episode(1, { id: "init-1" }))).status, "accepted");
    assert.equal((await c.recall({ embedding: vector(DIM, 2, true), max_results: 1 })).memories[0].episode.id, "init-1");
    await c.close();
  });

  it("no key: UnauthenticatedError (error after init, close 1008), not retried, within connectTimeoutMs", async () => {
    const space = newSpace("sec-nokey");
    await server.createSpace(space, DIM);
    const c = client(space, { connectTimeoutMs: 3000 });
    const { error, ms, reconnecting } = await failedConnect(c);
    assert.ok(error instanceof UnauthenticatedError, `${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.code, "unauthenticated");
    assert.ok(ms < 3000, `failed after ${ms.toFixed(0)} ms`);
    assert.equal(reconnecting.length, 0);
    assert.equal(c.state, "failed");
    await assert.rejects(c.observe(episode(1)), (e) => e === error);
    assert.equal(await server.spaceCount(space), 0);
  });

  it("wrong key (subprotocol): refused with HTTP 401 before the upgrade -> UnauthenticatedError, not retried", async () => {
    const c = client(newSpace("sec-wrong"), { apiKey: WRONG_KEY, connectTimeoutMs: 3000 });
    const { error, ms, reconnecting } = await failedConnect(c);
    assert.ok(error instanceof UnauthenticatedError, `${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.httpStatus, 401);
    assert.ok(ms < 3000, `failed after ${ms.toFixed(0)} ms`);
    assert.equal(reconnecting.length, 0);
    noKeyIn(error);
  });

  it("wrong key in init: UnauthenticatedError from the server's error message, not retried", async () => {
    const c = client(newSpace("sec-wrong-init"), { apiKey: WRONG_KEY, apiKeyTransport: "init", connectTimeoutMs: 3000 });
    const { error, ms, reconnecting } = await failedConnect(c);
    assert.ok(error instanceof UnauthenticatedError, `${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.httpStatus, undefined);
    assert.ok(ms < 3000, `failed after ${ms.toFixed(0)} ms`);
    assert.equal(reconnecting.length, 0);
    noKeyIn(error);
  });

  it("a key for another space: observations rejected 'unauthorized', recall permission_denied, the stream goes on", async () => {
    const space = newSpace("sec-foreign");
    const own = newSpace("other-own");
    await server.createSpace(space, DIM);
    await server.createSpace(own, DIM);
    const seed = client(own, { apiKey: KEYS.other.key });
    assert.equal((await seed.observe(episode(7, { id: "own-7" }))).status, "accepted");
    await seed.close();

    const c = client(space, { apiKey: KEYS.other.key });
    const retrying = [];
    c.on("retrying", (e) => retrying.push(e));
    for (const i of [1, 2]) {
      await assert.rejects(c.observe(episode(i, { id: `foreign-${i}` })), (e) => {
        assert.ok(e instanceof ObservationRejectedError, `${e?.constructor?.name}: ${e?.message}`);
        assert.equal(e.reason, "unauthorized");
        assert.equal(e.retries, 0);
        noKeyIn(e);
        return true;
      });
    }
    const session = c.sessionId;
    // No read on this space either: the recall fails, the stream stays.
    await assert.rejects(c.recall({ embedding: vector(DIM, 1, true) }), (e) => {
      assert.ok(e instanceof PermissionDeniedError, `${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.code, "permission_denied");
      return true;
    });
    // ...and a recall of a space the key does cover works on the same stream.
    const r = await c.recall({ embedding: vector(DIM, 8, true), max_results: 1 }, { memorySpaceId: own });
    assert.equal(r.memories[0]?.episode.id, "own-7");
    assert.equal(c.state, "open");
    assert.equal(c.sessionId, session);
    assert.equal(c.stats.retries, 0);
    assert.equal(c.stats.sent, 2);
    assert.equal(retrying.length, 0);
    const closed = await c.close();
    assert.equal(closed.rejected, 2);
    assert.equal(await server.spaceCount(space), 0);
  });

  it("read-only key: observation rejected 'unauthorized', recall works", async () => {
    const space = newSpace("sec-ro");
    await server.createSpace(space, DIM);
    const w = client(space, { apiKey: KEYS.writer.key });
    for (let i = 0; i < 3; i++) await w.observe(episode(i, { id: `ro-${i}` }));
    await w.close();

    const c = client(space, { apiKey: KEYS.reader.key });
    await assert.rejects(c.observe(episode(9, { id: "ro-denied" })), (e) => {
      assert.ok(e instanceof ObservationRejectedError, `${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.reason, "unauthorized");
      return true;
    });
    const r = await c.recall({ embedding: vector(DIM, 1, true), max_results: 10 });
    assert.deepEqual(r.memories.map((m) => m.episode.id).sort(), ["ro-0", "ro-1", "ro-2"]);
    // A rejected observation does not end anything: results keep their order.
    const results = [];
    for await (const x of c.observeMany([episode(10), episode(11)])) results.push([x.status, x.status === "rejected" ? x.reason : ""]);
    assert.deepEqual(results, [["rejected", "unauthorized"], ["rejected", "unauthorized"]]);
    assert.equal(c.state, "open");
    await c.close();
    assert.equal(await server.spaceCount(space), 3);
  });

  it("read-write key: recalling a space outside its grants is PermissionDeniedError, the stream goes on", async () => {
    const space = newSpace("sec-rw2");
    const foreign = newSpace("other-x");
    await server.createSpace(space, DIM);
    await server.createSpace(foreign, DIM);
    const c = client(space, { apiKey: KEYS.writer.key });
    await assert.rejects(c.recall({ embedding: vector(DIM, 1, true) }, { memorySpaceId: foreign }), PermissionDeniedError);
    assert.equal((await c.observe(episode(3, { id: "after-denied" }))).status, "accepted");
    await c.close();
  });

  it("without the CA: TlsCertificateError at once (not retried), pointing at tls.ca", async () => {
    const c = client(newSpace("sec-noca"), { apiKey: KEYS.writer.key, tls: undefined, connectTimeoutMs: 3000 });
    const { error, ms, reconnecting } = await failedConnect(c);
    assert.ok(error instanceof TlsCertificateError, `${error?.constructor?.name}: ${error?.message}`);
    assert.ok(error instanceof ConnectionError);
    assert.match(error.message, /options\.tls = \{ ca:/);
    assert.ok(error.certificateCode.length > 0);
    assert.ok(ms < 3000, `failed after ${ms.toFixed(0)} ms`);
    assert.equal(reconnecting.length, 0);
    noKeyIn(error);
  });

  it("plain ws:// to the TLS-only port does not connect", async () => {
    const url = server.wsUrl.replace(/^wss:/, "ws:");
    const c = new EngramWebSocketClient(url, { space: newSpace("sec-plain"), apiKey: KEYS.writer.key, reconnect: false, connectTimeoutMs: 3000 });
    clients.push(c);
    const error = await c.connect().then(
      () => assert.fail("connected over plaintext to a TLS listener"),
      (e) => e,
    );
    assert.ok(error instanceof ConnectionError || error.name === "TimeoutError", `${error?.constructor?.name}: ${error?.message}`);
    noKeyIn(error);
  });

  it("raw upgrade: a wrong key in the Authorization header is answered 401 before the upgrade", async () => {
    const status = await new Promise((resolve, reject) => {
      const ws = new WebSocket(server.wsUrl, { ca: tls.caPem, headers: { authorization: `Bearer ${WRONG_KEY}` } });
      ws.on("unexpected-response", (_req, res) => {
        resolve(res.statusCode);
        res.resume();
        ws.terminate();
      });
      ws.on("open", () => {
        ws.terminate();
        reject(new Error("the upgrade with a wrong key succeeded"));
      });
      ws.on("error", (e) => reject(e));
    });
    assert.equal(status, 401);
  });

  it("a good key in the Authorization header (Node) works; the session is usable", async () => {
    const space = newSpace("sec-hdr");
    await server.createSpace(space, DIM);
    const ws = new WebSocket(server.wsUrl, { ca: tls.caPem, headers: { authorization: `Bearer ${KEYS.writer.key}` } });
    const inbox = [];
    ws.on("message", (d) => inbox.push(JSON.parse(d.toString())));
    await new Promise((res, rej) => {
      ws.once("open", res);
      ws.once("error", rej);
    });
    ws.send(JSON.stringify({ type: "init", memory_space_id: space }));
    await until(() => inbox.some((m) => m.type === "init_ack" || m.type === "error"), { timeoutMs: 5000, what: "init_ack" });
    assert.equal(inbox[0].type, "init_ack", JSON.stringify(inbox[0]));
    ws.close();
  });
});
