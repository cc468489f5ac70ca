// Compiled (never run) by `npm run typecheck`: the public types as a
// consumer sees them (from dist/index.d.ts), under strict settings.
import {
  EngramWebSocketClient,
  ObservationRejectedError,
  ServerError,
  type ClosedMessage,
  type ObservationAccepted,
  type ObservationResult,
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
