/** Errors the client throws or rejects with. All extend {@link EngramError}. */

import type { Episode, ErrorCode, RejectReason } from "./protocol.js";

/** Base class: `kind` tells the subclasses apart without `instanceof`. */
export class EngramError extends Error {
  readonly kind: string = "engram";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * An observation got a final rejection: one that is not retried (e.g.
 * `invalid`), or an `overloaded` one after `overloadRetry.maxRetries`
 * resends, or `closed` (the session ended before it was answered).
 */
export class ObservationRejectedError extends EngramError {
  override readonly kind = "rejected";
  constructor(
    readonly reason: RejectReason,
    /** The server's explanation (or the client's, for local `closed`). */
    readonly serverMessage: string,
    /** The caller's number for this observation (1, 2, 3... in submit order). */
    readonly sequenceNumber: number,
    readonly episode: Episode,
    readonly retries: number,
    readonly retryAfterMs?: number,
  ) {
    super(`observation ${sequenceNumber} rejected (${reason}): ${serverMessage}`);
  }
}

/** The server answered with an `error` message. */
export class ServerError extends EngramError {
  override readonly kind = "server";
  constructor(
    readonly code: ErrorCode,
    readonly serverMessage: string,
    readonly requestId?: string,
    readonly fatal: boolean = false,
  ) {
    super(`server error ${code}: ${serverMessage}`);
  }
}

/** The connection could not be (re-)established, or broke for good. */
export class ConnectionError extends EngramError {
  override readonly kind = "connection";
  constructor(
    message: string,
    /** The WebSocket close code, when the socket was closed. */
    readonly closeCode?: number,
    /** Reconnect attempts made before giving up (0 when none were). */
    readonly attempts: number = 0,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The operation needs an open session but the client is closed (or failed). */
export class ClientClosedError extends EngramError {
  override readonly kind = "closed";
}

/** The server said something this client cannot reconcile (numbering, order). */
export class ProtocolError extends EngramError {
  override readonly kind = "protocol";
}

/** No answer in time. */
export class TimeoutError extends EngramError {
  override readonly kind = "timeout";
}
