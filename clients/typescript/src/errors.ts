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
  /** `"server"`; the subclasses: `"unauthenticated"`, `"permission_denied"`. */
  override readonly kind: string = "server";
  constructor(
    readonly code: ErrorCode,
    readonly serverMessage: string,
    readonly requestId?: string,
    readonly fatal: boolean = false,
  ) {
    super(`server error ${code}: ${serverMessage}`);
  }
}

/**
 * The server did not accept the API key: none was sent (the server wants
 * one), or it is unknown (revoked, mistyped). Either the server's `error`
 * message with code `unauthenticated` (then close 1008), or the upgrade
 * refused with HTTP 401 before the WebSocket opened (`httpStatus: 401`;
 * reported in Node by the `ws` package; a browser cannot see the status).
 * Final: never retried by reconnect. The message never contains the key.
 */
export class UnauthenticatedError extends ServerError {
  override readonly kind: string = "unauthenticated";
  constructor(
    serverMessage: string,
    /** 401 when the server refused the upgrade request itself. */
    readonly httpStatus?: number,
    requestId?: string,
  ) {
    super("unauthenticated", serverMessage, requestId, true);
  }
}

/**
 * The key is valid but lacks the role for the space, e.g. a recall on a
 * stream whose key has no `read` on that space (the recall fails with this,
 * the stream goes on). An observation without `write` is not this error: it
 * is rejected with reason `unauthorized` ({@link ObservationRejectedError}).
 */
export class PermissionDeniedError extends ServerError {
  override readonly kind: string = "permission_denied";
  constructor(serverMessage: string, requestId?: string, fatal = false) {
    super("permission_denied", serverMessage, requestId, fatal);
  }
}

/** The `error` the server sent, as the matching class. */
export function serverError(code: ErrorCode, message: string, requestId?: string, fatal = false): ServerError {
  if (code === "unauthenticated") return new UnauthenticatedError(message, undefined, requestId);
  if (code === "permission_denied") return new PermissionDeniedError(message, requestId, fatal);
  return new ServerError(code, message, requestId, fatal);
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

/**
 * The TLS handshake failed because the server's certificate was not
 * trusted or does not match the host (Node: the `ws` package reports the
 * reason). Final: not retried. For a server with a private CA pass its
 * certificate as `tls.ca`.
 */
export class TlsCertificateError extends ConnectionError {
  constructor(
    message: string,
    /** Node's error code, e.g. `UNABLE_TO_GET_ISSUER_CERT_LOCALLY`, `ERR_TLS_CERT_ALTNAME_INVALID`. */
    readonly certificateCode: string,
    options?: { cause?: unknown },
  ) {
    super(message, undefined, 0, options);
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
