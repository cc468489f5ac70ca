/** Client configuration. */

import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
import { DEFAULT_RETRY, type RetryPolicy } from "./outstanding.js";
import {
  constructorOptions,
  isNode,
  type TlsOptions,
  type WebSocketConstructor,
  type WebSocketConstructorOptions,
} from "./transport.js";

/** Where the API key goes (see {@link ClientOptions.apiKey}). */
export type ApiKeyTransport = "subprotocol" | "init";

/** The subprotocol the server selects when the key travels as `bearer.<KEY>`. */
export const STREAM_SUBPROTOCOL = "engram.v1";

export interface ClientOptions {
  /**
   * The memory space this client's stream writes to and recalls from by
   * default (`init.memory_space_id`). Required. One client = one space; use
   * one client per space (a recall may name another space per call).
   */
  space: string;
  /**
   * The API key (a server started with `--api-keys` wants one). Sent, by
   * default, as the WebSocket subprotocols `["engram.v1", "bearer." + apiKey]`
   * of the upgrade request: that works in browsers (which cannot set
   * headers) and in Node, and the server refuses a bad key (HTTP 401)
   * before the WebSocket opens. Never part of an error message or event;
   * not kept in `client.options`.
   */
  apiKey?: string;
  /**
   * `"subprotocol"` (default): the key goes in the upgrade request as
   * above. `"init"`: the key goes as `api_key` in the stream's first message
   * (`init`); use it for a key with characters a subprotocol cannot carry,
   * or in a browser to get {@link UnauthenticatedError} for a bad key (a
   * browser hides the HTTP 401 of a refused upgrade: it looks like a
   * network failure there, see the README).
   */
  apiKeyTransport?: ApiKeyTransport;
  /**
   * TLS settings for `wss://` in Node (a private CA: `{ ca: readFileSync("ca.pem") }`),
   * passed to the `ws` package's constructor. `wss://` URLs signed by a
   * publicly trusted CA need none. Browsers cannot take them (the browser's
   * trust store decides): there, setting `tls` without an injected
   * `WebSocket` throws a `TypeError`.
   */
  tls?: TlsOptions;
  /**
   * The WebSocket class to use. Default: `globalThis.WebSocket`, else the
   * `ws` package; in Node with `apiKey` or `tls`, the `ws` package. An
   * injected class is called as `new WebSocket(url, protocols?, tlsOptions?)`.
   */
  WebSocket?: WebSocketConstructor;
  /** Ask the server for flow-control statuses (SLOW_DOWN); the client then paces itself. Default true. */
  enableBackpressure?: boolean;
  /**
   * Observations sent and not yet answered, at most (more wait in the
   * client), and `observeMany`'s window of answers not yet consumed. Default 1024.
   */
  maxInFlight?: number;
  /** A silent connection sends `heartbeat` this often. 0 turns heartbeats off. Default 20 000 ms. */
  heartbeatIntervalMs?: number;
  /**
   * After a heartbeat, no message at all from the server for this long means
   * the connection is dead: it is dropped and the client reconnects. Default 10 000 ms.
   */
  heartbeatTimeoutMs?: number;
  /** Limit on opening the socket and getting `init_ack`. Default 5 000 ms. */
  connectTimeoutMs?: number;
  /** Reconnect with backoff (and resume the session) when the connection breaks; `false` fails instead. */
  reconnect?: Partial<BackoffPolicy> | false;
  /** Resending observations rejected as `overloaded`. */
  overloadRetry?: Partial<RetryPolicy>;
  /**
   * Give every episode without an `id` a client-made UUID before it is first
   * sent, so a resend after the server lost the session is deduplicated by
   * the server (answered `duplicate: true`) instead of stored twice. Default true.
   */
  assignEpisodeIds?: boolean;
  /** Memories per `recall_result` batch; 0 lets the server send all in one. Default 0. */
  recallBatchSize?: number;
}

/** The options as the client uses them. The API key itself is not among them (the client keeps it private). */
export interface ResolvedOptions {
  space: string;
  /** How the API key is sent; `undefined` without a key. */
  apiKeyTransport: ApiKeyTransport | undefined;
  /** `tls` as passed to the WebSocket constructor (CA certificates as PEM text). */
  tls: Readonly<WebSocketConstructorOptions> | undefined;
  WebSocket: WebSocketConstructor | undefined;
  enableBackpressure: boolean;
  maxInFlight: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  connectTimeoutMs: number;
  reconnect: BackoffPolicy;
  overloadRetry: RetryPolicy;
  assignEpisodeIds: boolean;
  recallBatchSize: number;
}

export function resolveOptions(o: ClientOptions): ResolvedOptions {
  if (typeof o?.space !== "string" || o.space === "") {
    throw new TypeError("EngramWebSocketClient: options.space (the memory space id) is required");
  }
  const reconnect: BackoffPolicy =
    o.reconnect === false ? { ...DEFAULT_BACKOFF, maxAttempts: 0 } : { ...DEFAULT_BACKOFF, ...o.reconnect };
  const apiKeyTransport = checkApiKey(o.apiKey, o.apiKeyTransport);
  if (o.tls !== undefined) {
    if (typeof o.tls !== "object" || o.tls === null) throw new TypeError("EngramWebSocketClient: options.tls must be an object ({ ca?, rejectUnauthorized? })");
    if (o.WebSocket === undefined && !isNode()) {
      throw new TypeError(
        "EngramWebSocketClient: options.tls applies in Node only (it is passed to the 'ws' package); in a browser the browser's trust store decides which certificates are trusted",
      );
    }
  }
  return {
    space: o.space,
    apiKeyTransport,
    tls: o.tls === undefined ? undefined : Object.freeze(constructorOptions(o.tls)),
    WebSocket: o.WebSocket,
    enableBackpressure: o.enableBackpressure ?? true,
    maxInFlight: Math.max(1, Math.floor(o.maxInFlight ?? 1024)),
    heartbeatIntervalMs: o.heartbeatIntervalMs ?? 20_000,
    heartbeatTimeoutMs: o.heartbeatTimeoutMs ?? 10_000,
    connectTimeoutMs: o.connectTimeoutMs ?? 5_000,
    reconnect,
    overloadRetry: { ...DEFAULT_RETRY, ...o.overloadRetry },
    assignEpisodeIds: o.assignEpisodeIds ?? true,
    recallBatchSize: o.recallBatchSize ?? 0,
  };
}

/**
 * A subprotocol is an HTTP token (RFC 9110 `tchar`): the key must be one to
 * travel as `bearer.<KEY>`. The checks never put the key in a message.
 */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkApiKey(key: unknown, transport: unknown): ApiKeyTransport | undefined {
  if (transport !== undefined && transport !== "subprotocol" && transport !== "init") {
    throw new TypeError(`EngramWebSocketClient: options.apiKeyTransport must be "subprotocol" or "init"`);
  }
  if (key === undefined) return undefined;
  if (typeof key !== "string" || key === "") {
    throw new TypeError("EngramWebSocketClient: options.apiKey must be a non-empty string");
  }
  const t: ApiKeyTransport = transport ?? "subprotocol";
  if (t === "subprotocol" && !TOKEN.test(key)) {
    throw new TypeError(
      'EngramWebSocketClient: options.apiKey has characters a WebSocket subprotocol cannot carry (allowed: letters, digits and !#$%&\'*+-.^_`|~); use apiKeyTransport: "init"',
    );
  }
  return t;
}
