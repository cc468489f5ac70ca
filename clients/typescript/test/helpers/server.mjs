// Starts a real `engram serve` for the tests: free ports (port 0, read back
// from the log), a temp data dir, killed at the end. Can be SIGKILLed and
// restarted on the same data dir and ports. Optionally with a keys file
// (`apiKeys`) and TLS (`tls`): then REST calls send `apiKey` and trust `tls.ca`.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository root (clients/typescript/test/helpers → ../../../..). */
export const repoRoot = resolve(here, "../../../..");

export function engramBin() {
  const bin = process.env.ENGRAM_BIN || "target/ci/engram";
  const path = isAbsolute(bin) ? bin : resolve(repoRoot, bin);
  if (!existsSync(path)) {
    throw new Error(`engram binary not found at ${path} (set ENGRAM_BIN or build it: cargo build --profile ci -p engram-server)`);
  }
  return path;
}

const ANSI = /\x1b\[[0-9;]*m/g;
const LISTEN = /listening.*?listener="?([A-Za-z_-]+)"?.*?addr=("?)([^\s"]+)\2/;

/** Resolves when `pred()` is truthy; polls every `stepMs`; rejects after `timeoutMs`. */
export async function until(pred, { timeoutMs = 10_000, stepMs = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** The keys file's hash of `key`: "sha256:" + lowercase hex of SHA-256 of its UTF-8 bytes. */
export function keyHash(key) {
  return `sha256:${createHash("sha256").update(key, "utf8").digest("hex")}`;
}

/**
 * Writes a keys file (TOML) to `path`: `keys` is a list of
 * `{ name, key, roles, spaces }` (the secret `key` is hashed here).
 */
export function writeKeysFile(path, keys) {
  const q = (v) => JSON.stringify(v); // TOML basic strings and arrays of them read like JSON
  const toml = keys
    .map((k) => `[[keys]]\nname = ${q(k.name)}\nhash = ${q(keyHash(k.key))}\nroles = [${k.roles.map(q).join(", ")}]\nspaces = [${k.spaces.map(q).join(", ")}]\n`)
    .join("\n");
  writeFileSync(path, toml);
  return path;
}

/**
 * `engram tls generate --dir DIR`: a fresh CA and a server certificate for
 * localhost, 127.0.0.1 and ::1. Returns the paths and the CA's PEM.
 */
export function generateTls(dir) {
  const r = spawnSync(engramBin(), ["tls", "generate", "--dir", dir], { encoding: "utf8", timeout: 30_000 });
  if (r.status !== 0) throw new Error(`engram tls generate failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  const paths = { ca: join(dir, "ca.pem"), cert: join(dir, "server.pem"), key: join(dir, "server.key") };
  for (const p of Object.values(paths)) if (!existsSync(p)) throw new Error(`engram tls generate did not write ${p}`);
  return { ...paths, caPem: readFileSync(paths.ca, "utf8") };
}

/** True when the binary has the security features (`--api-keys`, `engram tls`). */
export function hasSecurityFeatures() {
  const serve = spawnSync(engramBin(), ["serve", "--help"], { encoding: "utf8", timeout: 30_000 });
  const tls = spawnSync(engramBin(), ["tls", "--help"], { encoding: "utf8", timeout: 30_000 });
  return serve.status === 0 && /--api-keys/.test(serve.stdout) && tls.status === 0;
}

export class EngramServer {
  /**
   * @param {{queueCapacity?: number, walSync?: string, faultInjection?: boolean, extraArgs?: string[], env?: Record<string,string>,
   *          apiKeys?: string, apiKey?: string, tls?: {cert: string, key: string, caPem?: string}}} opts
   *   apiKeys: the keys file (--api-keys); apiKey: the key REST calls send;
   *   tls: --tls-cert/--tls-key, and the CA (PEM) REST calls trust.
   */
  constructor(opts = {}) {
    this.opts = opts;
    this.dataDir = mkdtempSync(join(tmpdir(), "engram-ts-test-"));
    this.proc = undefined;
    this.httpAddr = undefined;
    this.grpcAddr = undefined;
    this.log = "";
  }

  get http() {
    return `${this.opts.tls ? "https" : "http"}://${this.httpAddr}`;
  }
  get wsUrl() {
    return `${this.opts.tls ? "wss" : "ws"}://${this.httpAddr}/v1/stream`;
  }

  /** Starts the server (on the ports of the previous run, if any) and waits until /health/ready is 200. */
  async start({ timeoutMs = 30_000 } = {}) {
    const args = [
      "serve",
      "--data-dir",
      this.dataDir,
      "--grpc-addr",
      this.grpcAddr ?? "127.0.0.1:0",
      "--http-addr",
      this.httpAddr ?? "127.0.0.1:0",
    ];
    if (this.opts.queueCapacity) args.push("--queue-capacity", String(this.opts.queueCapacity));
    if (this.opts.walSync) args.push("--wal-sync", this.opts.walSync);
    if (this.opts.faultInjection) args.push("--fault-injection");
    if (this.opts.apiKeys) args.push("--api-keys", this.opts.apiKeys);
    if (this.opts.tls) args.push("--tls-cert", this.opts.tls.cert, "--tls-key", this.opts.tls.key);
    if (this.opts.extraArgs) args.push(...this.opts.extraArgs);
    const proc = spawn(engramBin(), args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", ...(this.opts.env ?? {}) },
    });
    this.proc = proc;
    const exited = new Promise((r) => proc.once("exit", (code, sig) => r({ code, sig })));
    this.exited = exited;
    let buf = "";
    const onData = (d) => {
      const s = d.toString().replace(ANSI, "");
      this.log += s;
      if (this.log.length > 200_000) this.log = this.log.slice(-100_000);
      buf += s;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const m = LISTEN.exec(line);
        if (m) {
          if (m[1] === "http") this.httpAddr = m[3];
          if (m[1] === "grpc") this.grpcAddr = m[3];
        }
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    let dead;
    exited.then((e) => (dead = e));
    await until(() => dead || this.httpAddr, { timeoutMs, what: "the http listener log line" }).catch((e) => {
      throw new Error(`${e.message}\n--- server log ---\n${this.log}`);
    });
    if (dead) throw new Error(`engram exited early (${JSON.stringify(dead)})\n--- server log ---\n${this.log}`);
    await until(
      async () => {
        if (dead) throw new Error(`engram exited (${JSON.stringify(dead)})\n${this.log}`);
        try {
          const r = await this.request("GET", "/health/ready", undefined, { auth: false });
          return r.status === 200;
        } catch {
          return false;
        }
      },
      { timeoutMs, what: "GET /health/ready == 200" },
    );
    return this;
  }

  /** SIGKILL (or another signal); waits until the process is gone. */
  async kill(signal = "SIGKILL") {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  /** Stops the server and removes the data dir. */
  async stop() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 5000);
      await this.exited;
      clearTimeout(t);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /**
   * One HTTP(S) request (node:http, so that TLS can trust the test CA):
   * sends `Authorization: Bearer <apiKey>` when the server has one (unless
   * `auth: false`, or `key` names another). Resolves `{ status, headers, text }`.
   */
  request(method, path, body, { auth = true, key = this.opts.apiKey, timeoutMs = 10_000 } = {}) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (auth && key) headers.authorization = `Bearer ${key}`;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const send = this.opts.tls ? httpsRequest : httpRequest;
    const tls = this.opts.tls ? { ca: this.opts.tls.caPem } : {};
    return new Promise((resolve, reject) => {
      const req = send(`${this.http}${path}`, { method, headers, timeout: timeoutMs, ...tls }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, text }));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
      req.on("error", reject);
      req.end(payload);
    });
  }

  async json(method, path, body, opts) {
    const r = await this.request(method, path, body, opts);
    const text = r.text;
    let data;
    try {
      data = text ? JSON.parse(text) : undefined;
    } catch {
      data = text;
    }
    return { status: r.status, data };
  }

  async createSpace(id, dimension) {
    const r = await this.json("PUT", `/v1/spaces/${encodeURIComponent(id)}`, { dimension });
    if (r.status !== 200 && r.status !== 201) throw new Error(`PUT space ${id}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data;
  }

  async spaceCount(id) {
    const r = await this.json("GET", `/v1/spaces/${encodeURIComponent(id)}`);
    if (r.status !== 200) throw new Error(`GET space ${id}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data.count;
  }

  async post(path) {
    const r = await this.request("POST", path);
    return r.status;
  }
}

/**
 * A deterministic pseudo-random unit vector (seeded). `positive`: every
 * component >= 0, so every pair has cosine >= 0 (recall's default
 * similarity_threshold 0 then filters nothing out).
 */
export function vector(dim, seed, positive = false) {
  let x = (seed * 2654435761) >>> 0 || 1;
  const v = new Array(dim);
  let n = 0;
  for (let i = 0; i < dim; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const f = positive ? x / 4294967296 : (x / 4294967296) * 2 - 1;
    v[i] = f;
    n += f * f;
  }
  n = Math.sqrt(n);
  for (let i = 0; i < dim; i++) v[i] = Math.round((v[i] / n) * 1e6) / 1e6;
  return v;
}
