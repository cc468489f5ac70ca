/**
 * The WebSocket implementation: the caller's (option `WebSocket`), else
 * `globalThis.WebSocket` (browsers, Deno, Node >= 22), else the `ws`
 * package loaded on demand (Node 20).
 */

/** The part of the WHATWG WebSocket this client uses (browsers and `ws` both have it). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  binaryType?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor, e.g. the browser's `WebSocket` or `ws`'s `WebSocket`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export const OPEN = 1;

let cached: Promise<WebSocketConstructor> | undefined;

/** Resolves which WebSocket class to use. */
export function resolveWebSocket(injected?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (injected) return Promise.resolve(injected);
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (typeof g === "function") return Promise.resolve(g as WebSocketConstructor);
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

/** A message's text; `undefined` for binary frames (the stream is text only). */
export function messageText(data: unknown): string | undefined {
  if (typeof data === "string") return data;
  return undefined;
}
