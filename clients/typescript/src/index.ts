/**
 * engram-client: a TypeScript client for engram's WebSocket stream
 * (`/v1/stream`), for browsers and Node 20.
 */
export {
  EngramWebSocketClient,
  uuid,
  type ClientEvents,
  type ClientState,
  type ClientStats,
  type CloseOptions,
  type ObserveOptions,
  type RecallOptions,
  type RecallResult,
} from "./client.js";
export { STREAM_SUBPROTOCOL, type ApiKeyTransport, type ClientOptions } from "./options.js";
export { Backoff, backoffDelay, DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
export { Pacer, MIN_RATE } from "./pacer.js";
export {
  Outstanding,
  DEFAULT_RETRY,
  retryDelay,
  type AckOutcome,
  type ObservationAccepted,
  type ObservationRejected,
  type ObservationResult,
  type RetryPolicy,
} from "./outstanding.js";
export {
  EngramError,
  ObservationRejectedError,
  ServerError,
  ConnectionError,
  ClientClosedError,
  ProtocolError,
  TimeoutError,
  UnauthenticatedError,
  PermissionDeniedError,
  TlsCertificateError,
} from "./errors.js";
export {
  resolveWebSocket,
  type EventHandler,
  type TlsOptions,
  type WebSocketConstructor,
  type WebSocketConstructorOptions,
  type WebSocketLike,
} from "./transport.js";
export type { Handler } from "./events.js";
export * from "./protocol.js";
