// Compiled (never run) by `npm run typecheck`: the public types as a
// consumer sees them (from dist/index.d.ts), under strict settings.
import { readFileSync } from "node:fs";
import { WebSocket as NodeWebSocket } from "ws";
import {
  EngramWebSocketClient,
  ObservationRejectedError,
  PermissionDeniedError,
  ServerError,
  TlsCertificateError,
  UnauthenticatedError,
  type ClientOptions,
  type TlsOptions,
  type WebSocketConstructor,
  type ClosedMessage,
  type Cue,
  type Episode,
  type EpisodeInput,
  type MemoryFilter,
  type ObservationAccepted,
  type ObservationResult,
  type RecalledMemory,
  type RecallResultMessage,
  type ServerMessage,
  type StatusMessage,
} from "../dist/index.js";

export async function consumer(): Promise<void> {
  const client = new EngramWebSocketClient("ws://localhost:8080/v1/stream", { space: "demo", maxInFlight: 64 });
  const off = client.on("status", (s: StatusMessage) => void s.suggested_rate);
  client.on("reconnecting", (e) => void [e.attempt, e.delayMs, e.error.message]);
  client.on("reconnected", (e) => void [e.sessionId, e.resumed, e.resent]);
  client.on("error", (e) => void e.kind);
  off();
  const ack: ObservationAccepted = await client.observe({ what: "x", embedding: [1, 0, 0] }, { priority: "high" });
  const n: number = ack.server_sequence;
  for await (const r of client.observeMany([{ embedding: [1, 0, 0] }])) {
    const res: ObservationResult = r;
    if (res.status === "rejected") void res.reason.toUpperCase();
    else void res.memory_id.toUpperCase();
  }
  for await (const b of client.recallStream({ embedding: [1, 0, 0], max_results: 5 }, { batchSize: 2 })) {
    const batch: RecallResultMessage = b;
    void batch.memories.map((m) => m.episode.id ?? m.similarity);
  }
  const { memories } = await client.recall({ embedding: [1, 0, 0] });
  void memories.length;
  // Recall filters: snake_case as on the wire; a metadata value is a string (equals) or a list (in).
  const filter: MemoryFilter = { tags_all: ["work"], tags_none: ["draft"], metadata: { user: "ada", source: ["chat", "mail"] } };
  const cue: Cue = { embedding: [1, 0, 0], max_results: 5, filter };
  const filtered = await client.recall(cue);
  void filtered.memories.map((m) => m.episode.tags?.includes("work"));
  await client.recall({ embedding: [1, 0, 0], filter: { tags_any: ["a", "b"] } });
  // @ts-expect-error metadata values are strings or lists of strings
  await client.recall({ embedding: [1, 0, 0], filter: { metadata: { n: 1 } } });
  // @ts-expect-error the wire names are snake_case (tags_all), as for every Cue field
  await client.recall({ embedding: [1, 0, 0], filter: { tagsAll: ["work"] } });
  // Recency: the half-life in seconds; every recalled memory has score and recency_weight.
  const recent = await client.recall({ embedding: [1, 0, 0], max_results: 3, recency_half_life_seconds: 7 * 86_400, filter });
  const top: RecalledMemory | undefined = recent.memories[0];
  const ranked: number[] = recent.memories.map((m) => m.score - m.similarity * m.recency_weight);
  void [top?.score, top?.recency_weight, ranked];
  // @ts-expect-error the half-life is a number of seconds
  await client.recall({ embedding: [1, 0, 0], recency_half_life_seconds: "7d" });
  // @ts-expect-error the wire name is snake_case
  await client.recall({ embedding: [1, 0, 0], recencyHalfLifeSeconds: 60 });
  // Expiry: expires_at (RFC 3339 string, or a Date when observing) or ttl_seconds (seconds).
  await client.observe({ embedding: [1, 0, 0], ttl_seconds: 3600 });
  await client.observe({ embedding: [1, 0, 0], expires_at: "2030-01-01T00:00:00Z" });
  await client.observe({ embedding: [1, 0, 0], expires_at: new Date(Date.now() + 60_000) });
  const input: EpisodeInput = { embedding: [1, 0, 0], expires_at: new Date() };
  const wire: Episode = { embedding: [1, 0, 0], expires_at: "2030-01-01T00:00:00Z", ttl_seconds: 60 };
  for await (const r of client.observeMany([input, wire])) void r.status;
  // A recalled episode's expires_at is the server's RFC 3339 string (absent: it never expires).
  const expiring = await client.recall({ embedding: [1, 0, 0] });
  const expiresAt: string | undefined = expiring.memories[0]?.episode.expires_at;
  if (expiresAt !== undefined) void new Date(expiresAt).getTime();
  // @ts-expect-error ttl_seconds is a number of seconds
  await client.observe({ embedding: [1, 0, 0], ttl_seconds: "1h" });
  // @ts-expect-error expires_at is a string or a Date, not epoch milliseconds
  await client.observe({ embedding: [1, 0, 0], expires_at: Date.now() + 60_000 });
  // @ts-expect-error the wire name is snake_case
  await client.observe({ embedding: [1, 0, 0], ttlSeconds: 60 });
  // @ts-expect-error on the wire (and in answers) expires_at is a string
  const notDate: Episode = { expires_at: new Date() };
  void notDate;
  const closed: ClosedMessage = await client.close({ drain: true });
  void [n, closed.accepted];
  try {
    await client.observe({ embedding: [] });
  } catch (e) {
    if (e instanceof ObservationRejectedError) void e.reason;
    if (e instanceof ServerError) void e.code;
  }
  const m = JSON.parse("{}") as ServerMessage;
  switch (m.type) {
    case "ack":
      void (m.status === "accepted" ? m.memory_id : m.reason);
      break;
    default:
      break;
  }
}

/** The browser's WebSocket as lib.dom.d.ts declares it (this config has no DOM lib): url and protocols, no options. */
interface DomEvent {
  readonly type: string;
}
interface DomMessageEvent extends DomEvent {
  readonly data: unknown;
}
interface DomCloseEvent extends DomEvent {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
}
interface DomWebSocket {
  binaryType: "blob" | "arraybuffer";
  readonly bufferedAmount: number;
  readonly readyState: number;
  readonly protocol: string;
  onclose: ((this: DomWebSocket, ev: DomCloseEvent) => unknown) | null;
  onerror: ((this: DomWebSocket, ev: DomEvent) => unknown) | null;
  onmessage: ((this: DomWebSocket, ev: DomMessageEvent) => unknown) | null;
  onopen: ((this: DomWebSocket, ev: DomEvent) => unknown) | null;
  close(code?: number, reason?: string): void;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
}
declare const BrowserWebSocket: {
  prototype: DomWebSocket;
  new (url: string | URL, protocols?: string | string[]): DomWebSocket;
  readonly OPEN: 1;
};

export async function security(): Promise<void> {
  // Both the browser's and ws's constructors are WebSocketConstructors.
  const browser: WebSocketConstructor = BrowserWebSocket;
  const node: WebSocketConstructor = NodeWebSocket;
  const tls: TlsOptions = { ca: readFileSync("ca.pem"), rejectUnauthorized: true };
  const opts: ClientOptions = { space: "demo", apiKey: "k", apiKeyTransport: "subprotocol", tls, WebSocket: node };
  const inBrowser = new EngramWebSocketClient("wss://engram.example/v1/stream", { space: "demo", apiKey: "k", WebSocket: browser });
  const inNode = new EngramWebSocketClient("wss://localhost:8080/v1/stream", opts);
  void [inBrowser.options.apiKeyTransport, inNode.options.tls?.ca];
  try {
    await inNode.recall({ embedding: [1, 0, 0] }, { memorySpaceId: "other" });
  } catch (e) {
    if (e instanceof UnauthenticatedError) void [e.httpStatus, e.code, e.serverMessage];
    if (e instanceof PermissionDeniedError) void e.requestId;
    if (e instanceof TlsCertificateError) void [e.certificateCode, e.closeCode];
  }
}
