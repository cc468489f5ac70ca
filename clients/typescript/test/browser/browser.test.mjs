// Browser test: headless Chromium (/usr/bin/chromium, driven by
// playwright-core) loads a page, served here, whose script is engram-client
// bundled for the browser by esbuild. The page talks to a real engram
// server's /v1/stream with the browser's native WebSocket: streams 1,000
// observations, recalls them, shows the results and sets window.__result.
// Screenshot: clients/typescript/test-artifacts/browser.png.
// A second page (auth-page.mjs) sends an API key as the WebSocket
// subprotocol `bearer.<key>` to a server with a keys file (plaintext on
// loopback: the browser would not trust the test CA); screenshot:
// test-artifacts/browser-auth.png.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";
import { chromium } from "playwright-core";

import { EngramServer, writeKeysFile } from "../helpers/server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, "../..");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const DIM = 32;
const N = 1000;

const KEY = "browser-writer-key-5e6f7a8b9c0d1e2f";
const WRONG_KEY = "browser-wrong-key-0000000000000000";

let server;
let authServer;
let keysDir;
let http;
let context;
let profile;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get update && apt-get install -y chromium (scripts/test-typescript.sh does this)`);
  }
  server = await new EngramServer({ walSync: "always" }).start();
  await server.createSpace("browser", DIM);
  keysDir = mkdtempSync(join(tmpdir(), "engram-browser-keys-"));
  const keysFile = writeKeysFile(join(keysDir, "keys.toml"), [
    { name: "browser-admin", key: "browser-admin-key-1a2b3c4d5e6f7a8b", roles: ["admin"], spaces: ["*"] },
    { name: "browser-writer", key: KEY, roles: ["read", "write"], spaces: ["browser-auth"] },
  ]);
  authServer = await new EngramServer({ walSync: "always", apiKeys: keysFile, apiKey: "browser-admin-key-1a2b3c4d5e6f7a8b" }).start();
  await authServer.createSpace("browser-auth", DIM);
  const bundle = (entry) =>
    build({
      entryPoints: [join(here, entry)],
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      write: false,
      logLevel: "silent",
    }).then((b) => b.outputFiles[0].text);
  const js = await bundle("page.mjs");
  const authJs = await bundle("auth-page.mjs");
  const page = (script) => `<!doctype html><html><head><meta charset="utf-8"><title>engram-client browser test</title>
<style>body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style></head>
<body><h1>engram-client in Chromium</h1><p id="progress">starting…</p><p id="recall"></p><p id="closed"></p>
<table><thead><tr><th>sent id</th><th>top recall hit</th><th>similarity</th><th>ok</th></tr></thead><tbody id="rows"></tbody></table>
<script type="module" src="${script}"></script></body></html>`;
  http = createServer((req, res) => {
    if (req.url.startsWith("/bundle.js") || req.url.startsWith("/auth.js")) {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(req.url.startsWith("/auth.js") ? authJs : js);
    } else if (req.url === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(page(req.url.startsWith("/auth") ? "/auth.js" : "/bundle.js"));
    }
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  profile = mkdtempSync(join(tmpdir(), "engram-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1000, height: 800 },
  });
});

after(async () => {
  await context?.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  await new Promise((r) => (http ? http.close(r) : r()));
  await server?.stop();
  await authServer?.stop();
  if (keysDir) rmSync(keysDir, { recursive: true, force: true });
});

it("a page streams 1,000 observations over the native WebSocket and recalls them", { timeout: 120_000 }, async () => {
  const page = context.pages()[0] ?? (await context.newPage());
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const { port } = http.address();
  const q = new URLSearchParams({ ws: server.wsUrl, space: "browser", dim: String(DIM), n: String(N) });
  await page.goto(`http://127.0.0.1:${port}/?${q}`);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 90_000 }).catch((e) => {
    throw new Error(`${e.message}\npage log:\n${logs.join("\n")}`);
  });
  const result = await page.evaluate(() => window.__result);
  const artifacts = join(pkg, "test-artifacts");
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "browser.png"), fullPage: true });
  console.log(`# browser result: ${JSON.stringify({ ...result, userAgent: undefined })}`);
  assert.equal(result.error, undefined, `${result.error}\npage log:\n${logs.join("\n")}`);
  assert.equal(result.nativeWebSocket, true);
  assert.equal(result.accepted, N);
  assert.equal(result.inOrder, true);
  assert.equal(result.recalled, result.sampled);
  assert.deepEqual(result.batches, [10, 10, 5]);
  assert.equal(result.closed.accepted, N);
  assert.equal(await server.spaceCount("browser"), N);
  assert.equal(await page.locator("body").getAttribute("data-done"), "true");
});

it("a page sends an API key as the subprotocol bearer.<key>; wrong or missing keys fail", { timeout: 60_000 }, async () => {
  const page = await context.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const { port } = http.address();
  const q = new URLSearchParams({ ws: authServer.wsUrl, space: "browser-auth", key: KEY, wrong: WRONG_KEY, dim: String(DIM), n: "20" });
  await page.goto(`http://127.0.0.1:${port}/auth?${q}`);
  await page.waitForFunction(() => window.__auth !== undefined, null, { timeout: 45_000 }).catch((e) => {
    throw new Error(`${e.message}\npage log:\n${logs.join("\n")}`);
  });
  const result = await page.evaluate(() => window.__auth);
  const artifacts = join(pkg, "test-artifacts");
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "browser-auth.png"), fullPage: true });
  await page.close();
  console.log(`# browser auth result: ${JSON.stringify(result)}`);
  assert.equal(result.error, undefined, `${result.error}\npage log:\n${logs.join("\n")}`);
  assert.equal(result.nativeWebSocket, true);
  // The key as the subprotocol: everything works, the server selected engram.v1.
  assert.equal(result.accepted, 20);
  assert.equal(result.topHit, "auth-3");
  assert.equal(result.selectedProtocol, "engram.v1");
  assert.equal(result.closed.accepted, 20);
  assert.equal(await authServer.spaceCount("browser-auth"), 20);
  // A wrong key as the subprotocol: refused before the upgrade (401); the
  // browser shows only a failed connection (documented in the README).
  assert.equal(result.wrongSubprotocol.kind, "connection", JSON.stringify(result.wrongSubprotocol));
  assert.ok(!result.wrongSubprotocol.message.includes(WRONG_KEY));
  // A wrong key in init, or none: the server's error says unauthenticated.
  assert.equal(result.wrongInit.kind, "unauthenticated", JSON.stringify(result.wrongInit));
  assert.equal(result.wrongInit.code, "unauthenticated");
  assert.ok(!result.wrongInit.message.includes(WRONG_KEY));
  assert.equal(result.noKey.kind, "unauthenticated", JSON.stringify(result.noKey));
  // tls options are refused in a browser.
  assert.equal(result.tlsInBrowser.name, "TypeError");
  assert.match(result.tlsInBrowser.message, /trust store/);
});
