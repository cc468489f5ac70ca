/**
 * The WebSocket implementation: the caller's (option `WebSocket`), else
 * `globalThis.WebSocket` (browsers, Deno, Node >= 22), else the `ws`
 * package loaded on demand (Node 20). In Node, a client with an API key or
 * TLS options uses the `ws` package even where `globalThis.WebSocket`
 * exists: `ws` takes the TLS options and reports the HTTP status of a
 * refused upgrade (401), which the WHATWG WebSocket hides.
 */

/**
 * An event handler property. Declared as a method's type so that it is
 * compared bivariantly: the browser's `WebSocket` (handlers of `Event`,
 * `MessageEvent`, `CloseEvent`) and `ws`'s then fit {@link WebSocketLike}.
 */
export type EventHandler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

/** The part of the WHATWG WebSocket this client uses (browsers and `ws` both have it). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  binaryType?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: EventHandler<unknown> | null;
  onmessage: EventHandler<{ data: unknown }> | null;
  onclose: EventHandler<{ code: number; reason: string; wasClean?: boolean }> | null;
  onerror: EventHandler<unknown> | null;
}

/**
 * TLS settings for `wss://` URLs in Node, passed to the `ws` package's
 * constructor (its third argument, as in `new WebSocket(url, protocols, { ca })`).
 * Browsers ignore them: there the browser's trust store decides.
 */
export interface TlsOptions {
  /** PEM certificate(s) of the CA(s) to trust instead of Node's default ones (e.g. a private CA's `ca.pem`). */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** `false` accepts any certificate: testing only. Default `true`. */
  rejectUnauthorized?: boolean;
}

/**
 * What the client passes as the constructor's third argument (only when
 * `tls` is set): {@link TlsOptions} with the CA certificates as PEM text
 * (bytes are decoded as UTF-8), a subset of `ws`'s `ClientOptions`.
 */
export interface WebSocketConstructorOptions {
  ca?: string | string[];
  rejectUnauthorized?: boolean;
}

/** `tls` as the constructor's options: CA bytes decoded to PEM text. */
export function constructorOptions(tls: TlsOptions): WebSocketConstructorOptions {
  const text = (c: string | Uint8Array): string => (typeof c === "string" ? c : new TextDecoder().decode(c));
  const out: WebSocketConstructorOptions = {};
  if (tls.ca !== undefined) out.ca = Array.isArray(tls.ca) ? tls.ca.map(text) : text(tls.ca);
  if (tls.rejectUnauthorized !== undefined) out.rejectUnauthorized = tls.rejectUnauthorized;
  return out;
}

/**
 * A WebSocket constructor, e.g. the browser's `WebSocket` (which takes
 * `url` and `protocols`) or `ws`'s `WebSocket` (which also takes options).
 * The client calls it as `new WebSocket(url)`, `new WebSocket(url,
 * protocols)` (with an API key), or `new WebSocket(url, protocols,
 * options)` (with `tls` options).
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: WebSocketConstructorOptions,
) => WebSocketLike;

export const OPEN = 1;

let cached: Promise<WebSocketConstructor> | undefined;

/** True in Node (and runtimes that pose as it: Bun, Deno's Node mode). */
export function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: unknown } } }).process;
  return typeof p?.versions?.node === "string";
}

function loadWs(): Promise<WebSocketConstructor> {
  cached ??= import("ws").then(
    (mod: { WebSocket?: unknown; default?: unknown }) => {
      const ctor = mod.WebSocket ?? mod.default;
      if (typeof ctor !== "function") throw new Error("the 'ws' package has no WebSocket export");
      return ctor as WebSocketConstructor;
    },
    (e: unknown) => {
      cached = undefined;
      throw new Error(
        "no WebSocket implementation: globalThis.WebSocket is missing and the 'ws' package could not be loaded (npm install ws, or pass options.WebSocket)",
        { cause: e },
      );
    },
  );
  return cached;
}

/**
 * Resolves which WebSocket class to use. `preferPackage`: in Node, use the
 * `ws` package even when `globalThis.WebSocket` exists (falls back to the
 * global one when `ws` cannot be loaded, unless `requirePackage`).
 */
export function resolveWebSocket(
  injected?: WebSocketConstructor,
  opts?: { preferPackage?: boolean; requirePackage?: boolean },
): Promise<WebSocketConstructor> {
  if (injected) return Promise.resolve(injected);
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  const global = typeof g === "function" ? (g as WebSocketConstructor) : undefined;
  if (global && !(opts?.preferPackage && isNode())) return Promise.resolve(global);
  const loaded = loadWs();
  if (!global || opts?.requirePackage) return loaded;
  return loaded.catch(() => global);
}

/** A message's text; `undefined` for binary frames (the stream is text only). */
export function messageText(data: unknown): string | undefined {
  if (typeof data === "string") return data;
  return undefined;
}
