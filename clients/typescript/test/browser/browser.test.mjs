// Browser test: headless Chromium (/usr/bin/chromium, driven by
// playwright-core) loads a page, served here, whose script is engram-client
// bundled for the browser by esbuild. The page talks to a real engram
// server's /v1/stream with the browser's native WebSocket: streams 1,000
// observations, recalls them, shows the results and sets window.__result.
// Screenshot: clients/typescript/test-artifacts/browser.png.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";
import { chromium } from "playwright-core";

import { EngramServer } from "../helpers/server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, "../..");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const DIM = 32;
const N = 1000;

let server;
let http;
let context;
let profile;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get update && apt-get install -y chromium (scripts/test-typescript.sh does this)`);
  }
  server = await new EngramServer({ walSync: "always" }).start();
  await server.createSpace("browser", DIM);
  const bundle = await build({
    entryPoints: [join(here, "page.mjs")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0].text;
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>engram-client browser test</title>
<style>body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style></head>
<body><h1>engram-client in Chromium</h1><p id="progress">starting…</p><p id="recall"></p><p id="closed"></p>
<table><thead><tr><th>sent id</th><th>top recall hit</th><th>similarity</th><th>ok</th></tr></thead><tbody id="rows"></tbody></table>
<script type="module" src="/bundle.js"></script></body></html>`;
  http = createServer((req, res) => {
    if (req.url.startsWith("/bundle.js")) {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(js);
    } else if (req.url === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(html);
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
