/**
 * The wire protocol of engram's WebSocket stream `/v1/stream`
 * (docs/api/websocket.md): one JSON object per text message, each with a
 * `type` field. Field names mirror the gRPC messages of
 * `proto/engram/v1/*.proto` in snake_case. These types describe exactly
 * what goes over the socket; the client passes episodes and cues through
 * unchanged (but for an episode's `expires_at` given as a `Date`, sent as
 * its RFC 3339 string: {@link EpisodeInput}).
 */

/** Something that happened, with its embedding (`engram.v1.Episode`). */
export interface Episode {
  /** Client id, at most 128 bytes. Absent: the client makes a UUID (see `assignEpisodeIds`). */
  id?: string;
  /** RFC 3339 timestamp; absent: the server's receive time. */
  when?: string;
  /** Text, at most 64 KiB. */
  what?: string;
  /** The space's dimension; finite values, not all zero. Absent in recall results unless `include_embeddings`. */
  embedding?: number[];
  /** In [0, 1]; default 1. */
  encoding_confidence?: number;
  tags?: string[];
  metadata?: Record<string, string>;
  /**
   * Expiry, RFC 3339 (optional; at most one of `expires_at` and
   * `ttl_seconds`): from this instant on (by the server's clock) the memory
   * is never recalled, and it is purged in the background. Must be in the
   * future when the server accepts the observation, else it is rejected
   * (`invalid`, the message naming `episode.expires_at`). In recalled
   * episodes: present when the memory expires (set by either field or by
   * the space's `default_ttl_seconds`), absent when it never does.
   * `observe` also takes a `Date` here (see {@link EpisodeInput}).
   */
  expires_at?: string;
  /**
   * Expiry as seconds after the server accepts the observation: more than
   * 0 and at most 100 years (3,155,760,000), else the observation is
   * rejected (`invalid`, the message naming `episode.ttl_seconds`). Not
   * with `expires_at`. Never in recalled episodes (they carry `expires_at`).
   */
  ttl_seconds?: number;
}

/**
 * What `observe` and `observeMany` take: an {@link Episode}, except that
 * `expires_at` may also be a `Date` (sent as RFC 3339 in UTC with
 * milliseconds, `Date.prototype.toISOString`). An invalid `Date` is
 * refused by the client with a `TypeError`; nothing else is checked here:
 * the server validates the rest (e.g. both `expires_at` and `ttl_seconds`).
 */
export type EpisodeInput = Omit<Episode, "expires_at"> & {
  expires_at?: string | Date;
};

/** What to recall by (`engram.v1.Cue`). */
export interface Cue {
  embedding: number[];
  /** 1-1000; default 10. */
  max_results?: number;
  /** Minimum cosine similarity; default 0. */
  similarity_threshold?: number;
  /** Inclusive window on `Episode.when` (RFC 3339). */
  when_from?: string;
  when_to?: string;
  /** The index's search breadth for this recall, 1-4096; default: the
   * server's `engine.index.ef_search`. Higher: better recall, slower. */
  ef_search?: number;
  /** Only memories with these tags and metadata are candidates (applied
   * inside the search: a recall returns min(`max_results`, matching
   * memories)). Absent or empty: all memories. */
  filter?: MemoryFilter;
  /**
   * Recency weighting: rank by score = similarity x 0.5^(age / half-life),
   * age = now - the memory's `when`, so a newer fact outranks an older,
   * similar one (a memory with similarity <= 0 keeps its similarity as
   * score). In seconds; more than 0 and at most 100 years, else the server
   * answers `invalid_argument` naming `cue.recency_half_life_seconds`.
   * Absent: by similarity alone.
   */
  recency_half_life_seconds?: number;
}

/**
 * Conditions on a memory's tags and metadata (`engram.v1.MemoryFilter`);
 * a memory matches when every condition holds. Every field is optional.
 * The server answers `invalid_argument` (naming the field, e.g.
 * `cue.filter.tags_all`) for an empty tag, an empty metadata key, a key
 * with no values (`[]`), oversized tags/keys/values, or more than 256
 * terms (tags plus metadata values) in all.
 */
export interface MemoryFilter {
  /** The memory has every one of these tags. */
  tags_all?: string[];
  /** The memory has at least one of these tags (ignored when empty). */
  tags_any?: string[];
  /** The memory has none of these tags. */
  tags_none?: string[];
  /** `metadata[key]` equals the value (a string) or is one of the values
   * (a list: "in"). Every key must hold. */
  metadata?: Record<string, string | string[]>;
}

export type Priority = "normal" | "high" | "low";
export type FlowAction = "pause" | "resume" | "buffer_status";
export type RejectReason =
  | "overloaded"
  | "invalid"
  | "out_of_order"
  | "closed"
  | "unavailable"
  | "unauthorized";
export type StreamState = "active" | "paused" | "backpressure" | "overloaded" | "closing";
/** Error codes the server documents; others may be added (hence `string`). */
export type ErrorCode =
  | "invalid_argument"
  | "malformed_json"
  | "not_found"
  | "resource_exhausted"
  | "unavailable"
  | "aborted"
  | "internal"
  /** No API key, or an unknown one (then close 1008). */
  | "unauthenticated"
  /** The key lacks the role for the space (e.g. a recall without `read`). */
  | "permission_denied"
  | (string & {});

// ---------------------------------------------------------------- client → server

export interface InitMessage {
  type: "init";
  memory_space_id: string;
  /** Empty or absent: a new session. */
  resume_session_id?: string;
  enable_backpressure?: boolean;
  /**
   * The API key, when it is not sent with the upgrade request (client
   * option `apiKeyTransport: "init"`). Default: absent (the key goes in the
   * subprotocol `bearer.<KEY>`).
   */
  api_key?: string;
}

export interface ObservationMessage {
  type: "observation";
  /** From 1, +1 per observation, per session. */
  sequence_number: number;
  episode: Episode;
  priority?: Priority;
}

export interface FlowControlMessage {
  type: "flow_control";
  action: FlowAction;
  buffer_remaining?: number;
}

export interface RecallMessage {
  type: "recall";
  /** Echoed on every `recall_result` (and `error`) answering it. */
  request_id: string;
  cue: Cue;
  /** Default: the stream's space. */
  memory_space_id?: string;
  /** Memories per batch; 0 = all in one batch. */
  batch_size?: number;
  include_embeddings?: boolean;
  /** Cluster mode: an ack's `token`; the recall, on any node, sees that write. */
  after?: ConsistencyToken;
}

/** Cluster mode: where a write is stored (its partition's log and the sequence there). */
export interface ConsistencyToken {
  partition: number;
  sequence: number;
}

export interface HeartbeatMessage {
  type: "heartbeat";
}

export interface CloseMessage {
  type: "close";
  /** Wait until everything sent is answered. */
  drain?: boolean;
}

export type ClientMessage =
  | InitMessage
  | ObservationMessage
  | FlowControlMessage
  | RecallMessage
  | HeartbeatMessage
  | CloseMessage;

// ---------------------------------------------------------------- server → client

export interface Capabilities {
  queue_capacity: number;
  dimension: number;
  max_message_size: number;
  /** Recalls one stream may have running at once (the client queues beyond it). Absent from older servers. */
  max_recalls_per_stream?: number;
}

export interface InitAckMessage {
  type: "init_ack";
  session_id: string;
  /** The last sequence number answered in this session (0 for a new one). */
  last_acked_sequence: number;
  capabilities: Capabilities;
}

interface AckCommon {
  type: "ack";
  sequence_number: number;
  /** True when this answers a number sent again after a resume. */
  replayed?: boolean;
}

export interface AcceptedAckMessage extends AckCommon {
  status: "accepted";
  memory_id: string;
  server_sequence: number;
  /** RFC 3339. */
  committed_at: string;
  /** An episode with this id already existed; nothing was stored. */
  duplicate?: boolean;
  /** Cluster mode: where it is stored (a recall's `after`). Absent on a single node. */
  token?: ConsistencyToken;
}

export interface RejectedAckMessage extends AckCommon {
  status: "rejected";
  reason: RejectReason;
  message?: string;
  /** With `overloaded`: resend (under a new number) after this. */
  retry_after_ms?: number;
}

export type AckMessage = AcceptedAckMessage | RejectedAckMessage;

export interface StatusMessage {
  type: "status";
  state: StreamState;
  queue_depth?: number;
  queue_capacity?: number;
  /** Queue depth / capacity, 0-1. */
  pressure?: number;
  /** Observations/s this stream should send (with `backpressure`/`overloaded`). */
  suggested_rate?: number;
  message?: string;
}

export interface RecalledMemory {
  episode: Episode;
  similarity: number;
  /** What the recall ranked by: `similarity` x `recency_weight`; equal to
   * `similarity` without `cue.recency_half_life_seconds` (and for a memory
   * with similarity <= 0, which keeps its similarity as score). */
  score: number;
  /** 0.5^(age / half-life) with `cue.recency_half_life_seconds`, in [0, 1]
   * (1 for a memory from the future; 0 once very old, as it underflows);
   * 1 without recency. */
  recency_weight: number;
  confidence: number;
  server_sequence: number;
  /** True: found in the index; false: in the not-yet-indexed tier. */
  indexed: boolean;
}

export interface RecallResultMessage {
  type: "recall_result";
  request_id: string;
  memories: RecalledMemory[];
  /** False on the last batch of a recall. */
  more: boolean;
  /** The same in every batch of one recall. */
  snapshot_sequence: number;
}

export interface ServerHeartbeatMessage {
  type: "heartbeat";
}

export interface ClosedMessage {
  type: "closed";
  final_sequence: number;
  accepted: number;
  rejected: number;
}

export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  message: string;
  /** When it answers a `recall`. */
  request_id?: string;
  /** True when the server closes the socket right after. */
  fatal?: boolean;
}

export type ServerMessage =
  | InitAckMessage
  | AckMessage
  | StatusMessage
  | RecallResultMessage
  | ServerHeartbeatMessage
  | ClosedMessage
  | ErrorMessage;

/** WebSocket close codes the stream uses (docs/api/websocket.md). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
  TryAgainLater: 1013,
} as const;

const SERVER_TYPES: ReadonlySet<string> = new Set([
  "init_ack",
  "ack",
  "status",
  "recall_result",
  "heartbeat",
  "closed",
  "error",
]);

/**
 * Parses one text message from the server. Returns `undefined` for
 * anything that is not a JSON object with a known `type` (a newer server
 * may send kinds this client does not know; they are ignored).
 */
export function parseServerMessage(text: string): ServerMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string" || !SERVER_TYPES.has(type)) return undefined;
  return value as ServerMessage;
}
