/** Client configuration. */

import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
import { DEFAULT_RETRY, type RetryPolicy } from "./outstanding.js";
import type { WebSocketConstructor } from "./transport.js";

export interface ClientOptions {
  /**
   * The memory space this client's stream writes to and recalls from by
   * default (`init.memory_space_id`). Required. One client = one space; use
   * one client per space (a recall may name another space per call).
   */
  space: string;
  /** The WebSocket class to use. Default: `globalThis.WebSocket`, else the `ws` package. */
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

export interface ResolvedOptions {
  space: string;
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
  return {
    space: o.space,
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
