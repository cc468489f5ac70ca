/**
 * The connection and session: opens the WebSocket, sends `init`, writes
 * observations (paced under SLOW_DOWN, held after an overload), matches
 * acks, retries overloaded observations, runs recalls, heartbeats, and on
 * a broken connection reconnects with backoff and resumes the session (or
 * opens a new one when the server lost it). Modelled on
 * `crates/engram-client/src/session.rs`.
 */

import { Backoff } from "./backoff.js";
import {
  ClientClosedError,
  ConnectionError,
  EngramError,
  ObservationRejectedError,
  ProtocolError,
  ServerError,
  serverError,
  TimeoutError,
  TlsCertificateError,
  UnauthenticatedError,
} from "./errors.js";
import { Emitter, type Handler } from "./events.js";
import { resolveOptions, STREAM_SUBPROTOCOL, type ClientOptions, type ResolvedOptions } from "./options.js";
import {
  Outstanding,
  type ObservationAccepted,
  type ObservationResult,
} from "./outstanding.js";
import { MIN_RATE, Pacer } from "./pacer.js";
import {
  CloseCode,
  parseServerMessage,
  type Capabilities,
  type ClientMessage,
  type ClosedMessage,
  type ConsistencyToken,
  type Cue,
  type Episode,
  type EpisodeInput,
  type ErrorMessage,
  type InitAckMessage,
  type Priority,
  type RecallMessage,
  type RecallResultMessage,
  type RecalledMemory,
  type ServerMessage,
  type StatusMessage,
} from "./protocol.js";
import { messageText, OPEN, resolveWebSocket, type WebSocketLike } from "./transport.js";

/** Where the client stands. */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closing" | "closed" | "failed";

/** Events, for `client.on(name, handler)`. */
export interface ClientEvents {
  /** A session is open (first connect, and after every reconnect). */
  open: { sessionId: string; resumed: boolean; lastAckedSequence: number; capabilities: Capabilities };
  /** Every `status` from the server (flow control: `backpressure` = SLOW_DOWN, `active`, `paused`...). */
  status: StatusMessage;
  /** The connection broke (or could not be opened); the next attempt follows after `delayMs`. */
  reconnecting: { attempt: number; delayMs: number; error: EngramError };
  /** A connection is up again: the session resumed (`resent` unanswered observations resent) or replaced. */
  reconnected: { sessionId: string; resumed: boolean; resent: number };
  /** An overloaded observation will be resent after `delayMs`. */
  retrying: { sequenceNumber: number; retry: number; delayMs: number };
  /** A server `error` not tied to a call, a connection problem, or the failure that ended the client. */
  error: EngramError;
  /** The session closed (after `close()`): the server's summary. */
  closed: ClosedMessage;
}

export interface ObserveOptions {
  priority?: Priority;
}

export interface RecallOptions {
  /** Default: the client's space. */
  memorySpaceId?: string;
  /** Memories per batch (recallStream); default `options.recallBatchSize`. */
  batchSize?: number;
  includeEmbeddings?: boolean;
  /** Cluster mode: an ack's `token`; the recall, on any node, sees that write (a single node ignores it). */
  after?: ConsistencyToken;
}

/** All batches of one recall, merged. */
export interface RecallResult {
  memories: RecalledMemory[];
  snapshot_sequence: number;
  batches: number;
}

export interface CloseOptions {
  /** Wait until every observation is answered (default true); false rejects what was not sent with `closed`. */
  drain?: boolean;
}

/** Counters, for monitoring and tests. */
export interface ClientStats {
  /** Observations submitted (caller numbers handed out). */
  submitted: number;
  /** Observation messages written, resends included. */
  sent: number;
  accepted: number;
  rejected: number;
  /** Overload resends. */
  retries: number;
  /** Successful reconnects. */
  reconnects: number;
  /** Times the server had lost the session and a new one was opened. */
  sessionsReplaced: number;
  /** Observations resent under their old numbers after a resume. */
  resent: number;
}

interface Ticket {
  resolve: (r: ObservationResult) => void;
  reject: (e: unknown) => void;
}

interface PendingRecall {
  msg: RecallMessage;
  /** A batch arrived: it cannot be sent again after a reconnect. */
  received: boolean;
  batches: RecallResultMessage[];
  done: boolean;
  error: EngramError | undefined;
  wake: (() => void) | undefined;
}

interface Closing {
  drain: boolean;
  sent: boolean;
  waiters: Array<{ resolve: (c: ClosedMessage) => void; reject: (e: unknown) => void }>;
}

interface Handshake {
  ws: WebSocketLike;
  ack: InitAckMessage;
}

const now = (): number => performance.now();

let recallCounter = 0;
/** The server's default `sessions.max_recalls_per_stream`, used until its `init_ack` says otherwise. */
const DEFAULT_RECALLS_PER_STREAM = 16;

/**
 * A client for engram's WebSocket stream `/v1/stream`.
 *
 * ```ts
 * const client = new EngramWebSocketClient("ws://localhost:8080/v1/stream", { space: "demo" });
 * const ack = await client.observe({ what: "had coffee", embedding: [0.9, 0.1, 0] });
 * const { memories } = await client.recall({ embedding: [1, 0, 0], max_results: 5 });
 * await client.close();
 * ```
 */
export class EngramWebSocketClient {
  readonly url: string;
  readonly options: Readonly<ResolvedOptions>;

  readonly #events = new Emitter<ClientEvents>();
  readonly #out: Outstanding<Ticket>;
  readonly #pacer = new Pacer();
  readonly #recalls = new Map<string, PendingRecall>();
  readonly #stats: ClientStats = {
    submitted: 0,
    sent: 0,
    accepted: 0,
    rejected: 0,
    retries: 0,
    reconnects: 0,
    sessionsReplaced: 0,
    resent: 0,
  };

  #state: ClientState = "idle";
  #ws: WebSocketLike | undefined;
  #started: Promise<void> | undefined;
  #sessionId = "";
  #capabilities: Capabilities | undefined;
  /** Recalls holding one of the server's per-stream recall places. */
  #recallsRunning = 0;
  #recallSlotWaiters: Array<() => void> = [];
  #nextSeq = 1;
  #holdUntil: number | undefined;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #flushAt: number | undefined;
  #flushQueued = false;
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #lastWrite = 0;
  #lastRead = 0;
  #heartbeatSentAt: number | undefined;
  #paused = false;
  #statusWaiters: Array<(s: StatusMessage | undefined) => void> = [];
  #closing: Closing | undefined;
  #closed: ClosedMessage | undefined;
  #failure: EngramError | undefined;
  /** The API key: kept here, out of `options`, so that logging the client or its options never shows it. */
  readonly #apiKey: string | undefined;
  /** The last fatal `error` the server sent on the current socket (its close follows). */
  #fatalError: ServerError | undefined;

  constructor(url: string, options: ClientOptions) {
    this.url = url;
    this.options = Object.freeze(resolveOptions(options));
    this.#apiKey = options.apiKey;
    this.#out = new Outstanding<Ticket>(this.options.overloadRetry);
  }

  // ------------------------------------------------------------------ public API

  get state(): ClientState {
    return this.#state;
  }
  /** The server's session id ("" before the first `init_ack`). */
  get sessionId(): string {
    return this.#sessionId;
  }
  get capabilities(): Capabilities | undefined {
    return this.#capabilities;
  }
  /** The pace (obs/s) enforced after a SLOW_DOWN, if any. */
  get pacingRate(): number | undefined {
    return this.#pacer.rate;
  }
  get stats(): Readonly<ClientStats> {
    return { ...this.#stats };
  }
  /** Observations submitted and not yet answered to the caller. */
  get pending(): number {
    return this.#out.length;
  }

  on<K extends keyof ClientEvents>(event: K, handler: Handler<ClientEvents[K]>): () => void {
    return this.#events.on(event, handler);
  }
  once<K extends keyof ClientEvents>(event: K, handler: Handler<ClientEvents[K]>): () => void {
    return this.#events.once(event, handler);
  }
  off<K extends keyof ClientEvents>(event: K, handler: Handler<ClientEvents[K]>): void {
    this.#events.off(event, handler);
  }

  /**
   * Opens the connection and session (every other call does this on
   * demand). Resolves once the server sent `init_ack`; rejects when the
   * client failed (e.g. unknown space, or the server unreachable after
   * every reconnect attempt).
   */
  connect(): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#state === "closed") return Promise.reject(new ClientClosedError("the client is closed"));
    this.#started ??= this.#run();
    return this.#started;
  }

  /**
   * Sends one observation. Resolves with the `accepted` ack once the
   * server made it durable (visible to every recall after it); rejects
   * with {@link ObservationRejectedError} for a final rejection (e.g.
   * `invalid`; `overloaded` is retried first), or with the error that
   * ended the client. `episode.expires_at` may be a `Date` (sent as RFC
   * 3339); an invalid `Date` rejects with a `TypeError`.
   */
  async observe(episode: EpisodeInput, opts?: ObserveOptions): Promise<ObservationAccepted> {
    const r = await this.#submit(episode, opts?.priority);
    if (r.status === "accepted") return r;
    throw new ObservationRejectedError(r.reason, r.message, r.sequence_number, r.episode, r.retries, r.retry_after_ms);
  }

  /**
   * Streams many observations, pipelined (up to `maxInFlight` unanswered),
   * and yields one result per episode in input order: accepted, or a
   * final rejection (`status: "rejected"`; not thrown, so one bad episode
   * does not end the stream). Throws when the client fails or the source
   * throws. Breaking out of the loop stops taking from the source; what
   * was already submitted is still sent and answered.
   */
  async *observeMany(
    episodes: Iterable<EpisodeInput> | AsyncIterable<EpisodeInput>,
    opts?: ObserveOptions,
  ): AsyncGenerator<ObservationResult, void, undefined> {
    const window = this.options.maxInFlight;
    const queue: Array<Promise<ObservationResult>> = [];
    let head = 0;
    let sourceDone = false;
    let sourceError: { e: unknown } | undefined;
    let stopped = false;
    let wakeConsumer: (() => void) | undefined;
    let wakeProducer: (() => void) | undefined;
    const producer = (async () => {
      try {
        for await (const ep of episodes) {
          while (queue.length - head >= window && !stopped) {
            await new Promise<void>((r) => (wakeProducer = r));
          }
          if (stopped) break;
          const p = this.#submit(ep, opts?.priority);
          p.catch(() => {}); // awaited below; this only marks it handled
          queue.push(p);
          wakeConsumer?.();
        }
      } catch (e) {
        sourceError = { e };
      } finally {
        sourceDone = true;
        wakeConsumer?.();
      }
    })();
    try {
      for (;;) {
        if (head >= queue.length) {
          if (sourceDone) break;
          await new Promise<void>((r) => (wakeConsumer = r));
          wakeConsumer = undefined;
          continue;
        }
        const r = await (queue[head] as Promise<ObservationResult>);
        queue[head] = undefined as unknown as Promise<ObservationResult>;
        head += 1;
        if (head > 4096 && head * 2 > queue.length) {
          queue.splice(0, head);
          head = 0;
        }
        wakeProducer?.();
        wakeProducer = undefined;
        yield r;
      }
      await producer;
      if (sourceError) throw sourceError.e;
    } finally {
      stopped = true;
      wakeProducer?.();
    }
  }

  /** Recalls by `cue`: every batch merged. Reads everything acked before the call. */
  async recall(cue: Cue, opts?: RecallOptions): Promise<RecallResult> {
    const memories: RecalledMemory[] = [];
    let snapshot = 0;
    let batches = 0;
    for await (const b of this.recallStream(cue, opts)) {
      for (const m of b.memories) memories.push(m);
      snapshot = b.snapshot_sequence;
      batches += 1;
    }
    return { memories, snapshot_sequence: snapshot, batches };
  }

  /**
   * Recalls by `cue`, yielding the server's `recall_result` batches as they
   * come (the last has `more: false`). Throws {@link ServerError} for a
   * failed recall (bad cue, unknown space). A recall interrupted by a
   * reconnect before its first batch is sent again; one interrupted after
   * it throws {@link ConnectionError}.
   */
  async *recallStream(cue: Cue, opts?: RecallOptions): AsyncGenerator<RecallResultMessage, void, undefined> {
    recallCounter += 1;
    const requestId = `r${recallCounter}-${Math.random().toString(36).slice(2, 10)}`;
    const msg: RecallMessage = {
      type: "recall",
      request_id: requestId,
      cue,
      batch_size: opts?.batchSize ?? this.options.recallBatchSize,
    };
    if (opts?.memorySpaceId !== undefined) msg.memory_space_id = opts.memorySpaceId;
    if (opts?.includeEmbeddings) msg.include_embeddings = true;
    if (opts?.after !== undefined) msg.after = { partition: opts.after.partition, sequence: opts.after.sequence };
    const p: PendingRecall = { msg, received: false, batches: [], done: false, error: undefined, wake: undefined };
    this.#checkUsable();
    // The server runs at most max_recalls_per_stream recalls per stream and
    // refuses one more: beyond it, recalls wait here for a place.
    await this.#takeRecallSlot();
    this.#recalls.set(requestId, p);
    try {
      void this.connect().catch(() => {});
      if (this.#state === "open") this.#write(msg);
      for (;;) {
        const b = p.batches.shift();
        if (b !== undefined) {
          yield b;
          continue;
        }
        if (p.error) throw p.error;
        if (p.done) return;
        await new Promise<void>((r) => (p.wake = r));
        p.wake = undefined;
      }
    } finally {
      this.#recalls.delete(requestId);
      this.#releaseRecallSlot();
    }
  }

  async #takeRecallSlot(): Promise<void> {
    const limit = () => Math.max(1, this.#capabilities?.max_recalls_per_stream ?? DEFAULT_RECALLS_PER_STREAM);
    while (this.#recallsRunning >= limit()) {
      await new Promise<void>((r) => this.#recallSlotWaiters.push(r));
      this.#checkUsable();
    }
    this.#recallsRunning += 1;
  }

  #releaseRecallSlot(): void {
    this.#recallsRunning -= 1;
    this.#recallSlotWaiters.shift()?.();
  }

  /** Wakes every recall waiting for a place (they re-check whether the client is still usable). */
  #wakeRecallWaiters(): void {
    for (const w of this.#recallSlotWaiters.splice(0)) w();
  }

  /** Asks the server to stop sending recall batches (observations still flow). Resolves with its `status` answer. */
  pause(): Promise<StatusMessage | undefined> {
    this.#paused = true;
    return this.#flow("pause");
  }

  /** Undoes {@link pause}. Resolves with the server's `status` answer. */
  resume(): Promise<StatusMessage | undefined> {
    this.#paused = false;
    return this.#flow("resume");
  }

  /**
   * Closes the session. With `drain` (default) waits until every
   * observation is answered, then sends `close` and resolves with the
   * server's `closed` summary (final_sequence, accepted, rejected). The
   * summary counts the current server session only (a session replaced
   * after a server restart starts from zero).
   */
  close(opts?: CloseOptions): Promise<ClosedMessage> {
    const drain = opts?.drain ?? true;
    if (this.#closed) return Promise.resolve(this.#closed);
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#state === "idle" && this.#out.isEmpty) {
      // Never connected and nothing to send: nothing to close on the server.
      const summary: ClosedMessage = { type: "closed", final_sequence: 0, accepted: 0, rejected: 0 };
      this.#finish(summary);
      return Promise.resolve(summary);
    }
    return new Promise<ClosedMessage>((resolve, reject) => {
      const closing = (this.#closing ??= { drain, sent: false, waiters: [] });
      closing.waiters.push({ resolve, reject });
      if (!drain && closing.drain && !closing.sent) closing.drain = false;
      if (!closing.drain) {
        this.#out.rejectWaiting("the client was closed (without drain) before this observation was sent");
        this.#deliver();
      }
      void this.connect().catch(() => {});
      this.#maybeSendClose();
    });
  }

  // ------------------------------------------------------------------ observations

  #checkUsable(): void {
    if (this.#failure) throw this.#failure;
    if (this.#state === "closed" || this.#closing) throw new ClientClosedError("the client is closed or closing");
  }

  #submit(episode: EpisodeInput, priority: Priority | undefined): Promise<ObservationResult> {
    let ep: Episode;
    try {
      this.#checkUsable();
      ep = this.#wireEpisode(episode);
    } catch (e) {
      return Promise.reject(e);
    }
    const seq = this.#nextSeq++;
    this.#stats.submitted += 1;
    return new Promise<ObservationResult>((resolve, reject) => {
      this.#out.push(seq, ep, priority, { resolve, reject }, now());
      void this.connect().catch(() => {});
      this.#scheduleFlush();
    });
  }

  /**
   * The episode as it goes on the wire: an `expires_at` Date as its RFC
   * 3339 string, an id when `assignEpisodeIds` and it has none. A copy when
   * anything changes; the caller's object is never modified.
   */
  #wireEpisode(episode: EpisodeInput): Episode {
    if (typeof episode !== "object" || episode === null) {
      throw new TypeError("an episode must be an object");
    }
    let ep = episode as Episode;
    const expiresAt: unknown = episode.expires_at;
    if (expiresAt instanceof Date) {
      if (Number.isNaN(expiresAt.getTime())) throw new TypeError("episode.expires_at is an invalid Date");
      ep = { ...ep, expires_at: expiresAt.toISOString() };
    }
    if (this.options.assignEpisodeIds && (ep.id === undefined || ep.id === "")) {
      ep = { ...ep, id: uuid() };
    }
    return ep;
  }

  #scheduleFlush(): void {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(() => {
      this.#flushQueued = false;
      this.#flush();
    });
  }

  /** When the next waiting observation may go: the latest of its own time, the overload hold and the pacer. */
  #gate(): number | undefined {
    const at = this.#out.nextSendAt();
    if (at === undefined) return undefined;
    return Math.max(at, this.#holdUntil ?? 0, this.#pacer.readyAt() ?? 0);
  }

  /** Writes every observation that may go now; arms a timer for the next one that must wait. */
  #flush(): void {
    if (this.#state !== "open") return;
    if (this.#closing?.sent) return;
    const max = this.options.maxInFlight;
    let t = now();
    // Node's `ws` writes each message with its own syscall; corking its
    // socket for the loop lets a burst go out in one writev.
    const sock = corkable(this.#ws);
    sock?.cork();
    try {
      this.#flushLoop(max, t);
    } finally {
      sock?.uncork();
    }
    this.#maybeSendClose();
  }

  #flushLoop(max: number, t: number): void {
    for (;;) {
      const at = this.#gate();
      if (at === undefined) break;
      if (at > t) {
        this.#armFlush(at);
        break;
      }
      if (this.#out.onWireCount >= max) break; // an ack makes room and flushes again
      const obs = this.#out.takeNext();
      if (obs === undefined) break;
      const text = JSON.stringify(obs);
      const limit = this.#capabilities?.max_message_size;
      if (limit !== undefined && limit > 0 && text.length * 3 > limit) {
        const bytes = utf8Length(text);
        if (bytes > limit) {
          // The server would drop the connection, and a resend after the
          // reconnect would do it again: answer it here instead.
          this.#out.rejectLastTaken(
            "invalid",
            `the observation is ${bytes} bytes as JSON; the server's max_message_size is ${limit}`,
          );
          this.#deliver();
          continue;
        }
      }
      this.#pacer.onSent(t);
      this.#stats.sent += 1;
      if (!this.#writeText(text)) return;
      if (this.#pacer.rate !== undefined) t = now();
    }
  }

  #armFlush(at: number): void {
    if (this.#flushTimer !== undefined && this.#flushAt !== undefined && this.#flushAt <= at) return;
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer);
    this.#flushAt = at;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      this.#flushAt = undefined;
      this.#flush();
    }, Math.max(0, at - now()));
  }

  #deliver(): void {
    for (;;) {
      const next = this.#out.popAnswered();
      if (next === undefined) break;
      const [answer, ticket] = next;
      if (answer.status === "accepted") this.#stats.accepted += 1;
      else this.#stats.rejected += 1;
      ticket.resolve(answer);
    }
    this.#maybeSendClose();
  }

  #maybeSendClose(): void {
    const c = this.#closing;
    if (!c || c.sent || this.#state !== "open") return;
    if (c.drain && !this.#out.isEmpty) return;
    c.sent = true;
    this.#write({ type: "close", drain: c.drain });
  }

  // ------------------------------------------------------------------ connection

  /** The connection loop's first run: connect (with backoff), then keep reconnecting on breaks. */
  async #run(): Promise<void> {
    this.#state = "connecting";
    await this.#establish(undefined);
  }

  /**
   * Opens a session with backoff until one is up: resuming the current
   * session (resending what is unanswered), or, if the server lost it,
   * opening a new one and sending everything unanswered again under new
   * numbers. Fails the client when attempts run out or on a fatal error.
   */
  async #establish(firstError: EngramError | undefined): Promise<void> {
    const backoff = new Backoff(this.options.reconnect);
    let error = firstError;
    let wait = firstError !== undefined;
    const reconnecting = firstError !== undefined;
    for (;;) {
      if (this.#ended()) return;
      if (wait && error) {
        const delayMs = backoff.next();
        if (delayMs === undefined) {
          const e = new ConnectionError(
            `gave up after ${backoff.attempts} reconnect attempts: ${error.message}`,
            error instanceof ConnectionError ? error.closeCode : undefined,
            backoff.attempts,
            { cause: error },
          );
          this.#fail(e);
          throw e;
        }
        this.#events.emit("reconnecting", { attempt: backoff.attempts, delayMs, error });
        await sleep(delayMs);
        if (this.#ended()) return;
      }
      wait = true;
      const resume = this.#sessionId !== "" ? this.#sessionId : undefined;
      let hs: Handshake;
      try {
        hs = await this.#handshake(resume);
      } catch (e) {
        const err = asEngramError(e);
        if (err instanceof ServerError && err.code === "not_found" && resume !== undefined) {
          // The server lost the session (a restart): a new one, everything unanswered again.
          this.#replaceSession();
          wait = false;
          error = err;
          continue;
        }
        if (isTransient(err)) {
          error = err;
          continue;
        }
        this.#fail(err);
        throw err;
      }
      if (this.#ended()) {
        hs.ws.close(CloseCode.Normal);
        return;
      }
      let resent = 0;
      if (resume !== undefined) {
        const r = this.#out.resume(hs.ack.last_acked_sequence);
        if (typeof r === "string") {
          // Positions cannot be reconciled: start over in a new session.
          this.#events.emit("error", new ProtocolError(`cannot resume the session: ${r}; opening a new one`));
          detach(hs.ws);
          hs.ws.close(CloseCode.Normal);
          this.#replaceSession();
          wait = false;
          continue;
        }
        this.#attach(hs);
        for (const obs of r) {
          this.#stats.sent += 1;
          this.#write(obs);
        }
        resent = r.length;
        this.#stats.resent += resent;
      } else {
        this.#attach(hs);
      }
      this.#events.emit("open", {
        sessionId: hs.ack.session_id,
        resumed: resume !== undefined,
        lastAckedSequence: hs.ack.last_acked_sequence,
        capabilities: hs.ack.capabilities,
      });
      if (reconnecting) {
        this.#stats.reconnects += 1;
        this.#events.emit("reconnected", { sessionId: hs.ack.session_id, resumed: resume !== undefined, resent });
      }
      this.#afterOpen();
      return;
    }
  }

  /** Opens a socket, sends `init`, waits for `init_ack`. */
  async #handshake(resume: string | undefined): Promise<Handshake> {
    const key = this.#apiKey;
    const transport = this.options.apiKeyTransport;
    const tls = this.options.tls;
    const Ctor = await resolveWebSocket(this.options.WebSocket, {
      preferPackage: key !== undefined || tls !== undefined,
      requirePackage: tls !== undefined,
    });
    return new Promise<Handshake>((resolve, reject) => {
      let settled = false;
      /** Why the handshake failed, when known before the close (a server `error`, HTTP 401, TLS). */
      let failure: EngramError | undefined;
      let ws: WebSocketLike;
      const settle = (f: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        f();
      };
      try {
        if (tls !== undefined) {
          ws = new Ctor(this.url, key !== undefined && transport === "subprotocol" ? [STREAM_SUBPROTOCOL, `bearer.${key}`] : [], { ...tls });
        } else if (key !== undefined && transport === "subprotocol") {
          ws = new Ctor(this.url, [STREAM_SUBPROTOCOL, `bearer.${key}`]);
        } else {
          ws = new Ctor(this.url);
        }
      } catch (e) {
        const text = this.#redact(String(e));
        reject(new ConnectionError(`cannot open ${this.url}: ${text}`, undefined, 0, this.#mentionsKey(e) ? undefined : { cause: e }));
        return;
      }
      const timer = setTimeout(() => {
        settle(() => {
          detach(ws);
          abort(ws);
          reject(new TimeoutError(`no init_ack from ${this.url} within ${this.options.connectTimeoutMs} ms`));
        });
      }, this.options.connectTimeoutMs);
      ws.onopen = () => {
        const init: ClientMessage = {
          type: "init",
          memory_space_id: this.options.space,
          enable_backpressure: this.options.enableBackpressure,
          ...(resume !== undefined ? { resume_session_id: resume } : {}),
          ...(key !== undefined && transport === "init" ? { api_key: key } : {}),
        };
        ws.send(JSON.stringify(init));
      };
      ws.onmessage = (ev) => {
        const text = messageText(ev.data);
        const msg = text === undefined ? undefined : parseServerMessage(text);
        if (msg === undefined) return;
        if (msg.type === "init_ack") {
          settle(() => {
            detach(ws);
            resolve({ ws, ack: msg });
          });
        } else if (msg.type === "error") {
          const e = serverError(msg.code, this.#redact(msg.message), msg.request_id, msg.fatal === true);
          failure = e;
          if (e.fatal) {
            settle(() => {
              detach(ws);
              abort(ws);
              reject(e);
            });
          }
        }
      };
      let socketError = "";
      ws.onerror = (ev) => {
        const m = (ev as { message?: unknown } | undefined)?.message;
        if (typeof m === "string" && m !== "") socketError = this.#redact(m);
        const known = this.#socketFailure(ev);
        if (known) failure ??= known;
      };
      ws.onclose = (ev) => {
        settle(() => {
          detach(ws);
          const why = this.#redact(ev.reason || "") || socketError;
          reject(
            failure ??
              new ConnectionError(
                `the connection to ${this.url} closed before init_ack (code ${ev.code}${why ? `: ${why}` : ""})`,
                ev.code,
              ),
          );
        });
      };
    });
  }

  /**
   * What a socket `error` event before the session opened says, when it is
   * final: the upgrade refused with 401 (the key), or an untrusted server
   * certificate. Both come from the `ws` package (Node); a browser's error
   * event says nothing.
   */
  #socketFailure(ev: unknown): EngramError | undefined {
    const e = ev as { message?: unknown; error?: unknown } | undefined;
    const message = typeof e?.message === "string" ? e.message : "";
    const status = /^Unexpected server response: (\d{3})$/.exec(message)?.[1];
    if (status === "401") {
      return new UnauthenticatedError(
        this.#apiKey === undefined
          ? `the server wants an API key (HTTP 401 on the upgrade request to ${this.url}); set options.apiKey`
          : `the server refused the API key (HTTP 401 on the upgrade request to ${this.url})`,
        401,
      );
    }
    const inner = e?.error as { code?: unknown; message?: unknown } | undefined;
    const code = typeof inner?.code === "string" ? inner.code : "";
    if (code !== "" && TLS_CERTIFICATE_CODE.test(code)) {
      const detail = this.#redact(typeof inner?.message === "string" ? inner.message : message);
      return new TlsCertificateError(
        `TLS: the certificate of ${this.url} is not accepted (${code}: ${detail}); a server with a private CA needs options.tls = { ca: <its CA certificate, PEM> }`,
        code,
        { cause: inner },
      );
    }
    return undefined;
  }

  /** `text` with the API key (should it ever appear) replaced. */
  #redact(text: string): string {
    const key = this.#apiKey;
    return key === undefined || !text.includes(key) ? text : text.split(key).join("<api key>");
  }

  #mentionsKey(e: unknown): boolean {
    const key = this.#apiKey;
    if (key === undefined) return false;
    const m = e instanceof Error ? `${e.message} ${e.stack ?? ""}` : String(e);
    return m.includes(key);
  }

  #attach(hs: Handshake): void {
    const ws = hs.ws;
    this.#ws = ws;
    this.#fatalError = undefined;
    this.#sessionId = hs.ack.session_id;
    this.#capabilities = hs.ack.capabilities;
    this.#state = "open";
    this.#pacer.clear();
    this.#lastRead = now();
    this.#lastWrite = now();
    this.#heartbeatSentAt = undefined;
    if (this.#closing) this.#closing.sent = false;
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      const text = messageText(ev.data);
      if (text === undefined) return;
      this.#lastRead = now();
      this.#heartbeatSentAt = undefined;
      const msg = parseServerMessage(text);
      if (msg !== undefined) this.#onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#onSocketClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {};
  }

  /** After a session opened: restore pause, resend recalls, heartbeat, flush. */
  #afterOpen(): void {
    if (this.#paused) this.#write({ type: "flow_control", action: "pause" });
    for (const p of this.#recalls.values()) {
      if (!p.received && !p.done && !p.error) this.#write(p.msg);
    }
    this.#startHeartbeat();
    this.#flush();
  }

  #write(msg: ClientMessage): boolean {
    return this.#writeText(JSON.stringify(msg));
  }

  #writeText(text: string): boolean {
    const ws = this.#ws;
    if (ws === undefined || ws.readyState !== OPEN) return false;
    ws.send(text);
    this.#lastWrite = now();
    return true;
  }

  #onMessage(msg: ServerMessage): void {
    switch (msg.type) {
      case "ack": {
        const t = now();
        const outcome = this.#out.onAck(msg, t);
        if (typeof outcome === "string") {
          this.#fail(new ProtocolError(outcome));
          return;
        }
        if (outcome.kind === "retrying") {
          this.#stats.retries += 1;
          const until = t + outcome.delayMs;
          this.#holdUntil = Math.max(this.#holdUntil ?? 0, until);
          this.#events.emit("retrying", {
            sequenceNumber: outcome.sequenceNumber,
            retry: outcome.retry,
            delayMs: outcome.delayMs,
          });
        } else {
          this.#deliver();
        }
        this.#flush();
        return;
      }
      case "status":
        this.#onStatus(msg);
        return;
      case "recall_result": {
        const p = this.#recalls.get(msg.request_id);
        if (!p) return;
        p.received = true;
        p.batches.push(msg);
        if (!msg.more) p.done = true;
        p.wake?.();
        return;
      }
      case "heartbeat":
        return;
      case "closed":
        this.#onClosed(msg);
        return;
      case "error":
        this.#onError(msg);
        return;
      case "init_ack":
        this.#fail(new ProtocolError("a second init_ack on one connection"));
        return;
    }
  }

  #onStatus(s: StatusMessage): void {
    if (s.state === "backpressure" || s.state === "overloaded") {
      // SLOW_DOWN: no faster than suggested_rate. A rate of 0 (or none) is
      // taken as the slowest pace the pacer keeps (MIN_RATE, 1/s): still
      // slowing down, without parking the stream for good.
      const rate = s.suggested_rate;
      this.#pacer.setRate(rate !== undefined && Number.isFinite(rate) && rate > 0 ? rate : MIN_RATE);
    } else if (s.state === "active") this.#pacer.clear();
    this.#events.emit("status", s);
    const waiters = this.#statusWaiters;
    this.#statusWaiters = [];
    for (const w of waiters) w(s);
    this.#flush();
  }

  #onError(m: ErrorMessage): void {
    const e = serverError(m.code, this.#redact(m.message), m.request_id, m.fatal === true);
    if (m.request_id !== undefined && m.request_id !== "") {
      const p = this.#recalls.get(m.request_id);
      if (p) {
        p.error = e;
        p.wake?.();
        return;
      }
    }
    if (e.fatal) this.#fatalError = e;
    this.#events.emit("error", e);
  }

  #onClosed(m: ClosedMessage): void {
    this.#out.rejectAll("the session was closed before this observation was answered");
    this.#deliver();
    this.#finish(m);
    const ws = this.#ws;
    // The server closes the socket (1000); make sure it goes even if it does not.
    if (ws) unref(setTimeout(() => ws.readyState === OPEN && ws.close(CloseCode.Normal), 1000));
  }

  #onSocketClosed(code: number, reason: string): void {
    const ws = this.#ws;
    if (ws) detach(ws);
    this.#ws = undefined;
    this.#stopHeartbeat();
    if (this.#state === "closed" || this.#state === "failed") return;
    const fatal = this.#fatalError;
    this.#fatalError = undefined;
    const why = fatal ? `${fatal.code}: ${fatal.serverMessage}` : reason;
    const error = new ConnectionError(
      `the connection closed (code ${code}${why ? `: ${why}` : ""})`,
      code,
      0,
      fatal ? { cause: fatal } : undefined,
    );
    // 1008 (policy: the session was taken over or timed out, a bad space)
    // and 1009 (message too big) would only happen again.
    if (code === CloseCode.PolicyViolation || code === CloseCode.MessageTooBig) {
      this.#fail(fatal ?? error);
      return;
    }
    this.#startReconnect(error);
  }

  #startReconnect(error: EngramError): void {
    this.#state = "reconnecting";
    // A new connection starts unpaced and unheld: the server re-sends its status.
    this.#pacer.clear();
    this.#holdUntil = undefined;
    for (const p of this.#recalls.values()) {
      if (p.received && !p.done && !p.error) {
        p.error = new ConnectionError("the connection broke in the middle of this recall", error instanceof ConnectionError ? error.closeCode : undefined);
        p.wake?.();
      }
    }
    this.#events.emit("error", error);
    this.#establish(error).catch(() => {});
  }

  /** Forgets the server session: everything unanswered is sent again in a new one, numbered from 1. */
  #replaceSession(): void {
    this.#out.restartSession(now());
    this.#sessionId = "";
    this.#holdUntil = undefined;
    this.#stats.sessionsReplaced += 1;
  }

  #flow(action: "pause" | "resume"): Promise<StatusMessage | undefined> {
    try {
      this.#checkUsable();
    } catch (e) {
      return Promise.reject(e);
    }
    void this.connect().catch(() => {});
    if (this.#state !== "open") return Promise.resolve(undefined); // applied when the session opens
    return new Promise<StatusMessage | undefined>((resolve) => {
      const timer = setTimeout(() => {
        this.#statusWaiters = this.#statusWaiters.filter((w) => w !== waiter);
        resolve(undefined);
      }, 5000);
      const waiter = (s: StatusMessage | undefined): void => {
        clearTimeout(timer);
        resolve(s);
      };
      this.#statusWaiters.push(waiter);
      this.#write({ type: "flow_control", action });
    });
  }

  // ------------------------------------------------------------------ heartbeat

  #startHeartbeat(): void {
    this.#stopHeartbeat();
    const interval = this.options.heartbeatIntervalMs;
    if (!(interval > 0)) return;
    const period = Math.max(10, interval / 2);
    this.#heartbeatTimer = setInterval(() => this.#heartbeatTick(), period);
    unref(this.#heartbeatTimer);
  }

  #stopHeartbeat(): void {
    if (this.#heartbeatTimer !== undefined) clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = undefined;
  }

  #heartbeatTick(): void {
    if (this.#state !== "open") return;
    const t = now();
    const sentAt = this.#heartbeatSentAt;
    if (sentAt !== undefined && t - sentAt >= this.options.heartbeatTimeoutMs && this.#lastRead < sentAt) {
      // Nothing at all from the server since the heartbeat: the connection is dead.
      const ws = this.#ws;
      if (ws) {
        detach(ws);
        abort(ws);
      }
      this.#ws = undefined;
      this.#stopHeartbeat();
      this.#startReconnect(
        new ConnectionError(`no answer to a heartbeat within ${this.options.heartbeatTimeoutMs} ms`, CloseCode.Abnormal),
      );
      return;
    }
    if (t - this.#lastWrite >= this.options.heartbeatIntervalMs) {
      if (this.#write({ type: "heartbeat" }) && sentAt === undefined) this.#heartbeatSentAt = t;
    }
  }

  // ------------------------------------------------------------------ endings

  #finish(summary: ClosedMessage): void {
    this.#closed = summary;
    this.#state = "closed";
    this.#stopTimers();
    const waiters = this.#closing?.waiters ?? [];
    for (const w of waiters) w.resolve(summary);
    for (const p of this.#recalls.values()) {
      if (!p.done && !p.error) {
        p.error = new ClientClosedError("the client closed before this recall finished");
        p.wake?.();
      }
    }
    this.#wakeRecallWaiters();
    this.#events.emit("closed", summary);
  }

  /** The client failed for good: hand over the answers known, fail everything else. */
  #fail(error: EngramError): void {
    if (this.#state === "closed" || this.#state === "failed") return;
    this.#deliver();
    this.#failure = error;
    this.#state = "failed";
    this.#stopTimers();
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws) {
      detach(ws);
      if (ws.readyState === OPEN) ws.close(CloseCode.Normal);
    }
    for (const u of this.#out.takeUnconfirmed()) {
      if (u.answer) u.ticket.resolve(u.answer);
      else u.ticket.reject(error);
    }
    for (const p of this.#recalls.values()) {
      if (!p.done && !p.error) {
        p.error = error;
        p.wake?.();
      }
    }
    this.#wakeRecallWaiters();
    const waiters = this.#closing?.waiters ?? [];
    for (const w of waiters) w.reject(error);
    for (const w of this.#statusWaiters) w(undefined);
    this.#statusWaiters = [];
    this.#events.emit("error", error);
  }

  #ended(): boolean {
    return this.#state === "closed" || this.#state === "failed";
  }

  #stopTimers(): void {
    this.#stopHeartbeat();
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    this.#flushAt = undefined;
  }
}

// ------------------------------------------------------------------ helpers

/** Node's codes for a server certificate that is not trusted, not valid now, or not for this host. */
const TLS_CERTIFICATE_CODE =
  /^(CERT_|UNABLE_TO_GET_ISSUER_CERT|UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|ERR_TLS_CERT_ALTNAME_INVALID|HOSTNAME_MISMATCH|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_EXCEEDED)/;

function isTransient(e: EngramError): boolean {
  // An untrusted certificate or a refused key would only fail again.
  if (e instanceof TlsCertificateError || e instanceof UnauthenticatedError) return false;
  if (e instanceof TimeoutError || e instanceof ConnectionError) {
    // A close during the handshake: only "policy" and "too big" are final.
    return e instanceof TimeoutError || (e.closeCode !== CloseCode.PolicyViolation && e.closeCode !== CloseCode.MessageTooBig);
  }
  if (e instanceof ServerError) {
    return e.code === "unavailable" || e.code === "resource_exhausted" || e.code === "internal" || e.code === "aborted";
  }
  return false;
}

function asEngramError(e: unknown): EngramError {
  if (e instanceof EngramError) return e;
  return new ConnectionError(e instanceof Error ? e.message : String(e), undefined, 0, { cause: e });
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}

/** Drops a socket at once (ws's `terminate`, else `close`). */
function abort(ws: WebSocketLike): void {
  const t = (ws as { terminate?: () => void }).terminate;
  try {
    if (typeof t === "function") t.call(ws);
    else ws.close();
  } catch {
    // already closed
  }
}

/** The `ws` package's underlying net.Socket, when there is one (Node), to cork writes. */
function corkable(ws: WebSocketLike | undefined): { cork(): void; uncork(): void } | undefined {
  const sock = (ws as { _socket?: { cork?: unknown; uncork?: unknown } } | undefined)?._socket;
  if (sock && typeof sock.cork === "function" && typeof sock.uncork === "function") {
    return sock as { cork(): void; uncork(): void };
  }
  return undefined;
}

/** Bytes of `s` in UTF-8, without encoding it. */
function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i += 1;
    } else n += 3;
  }
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function unref(t: unknown): void {
  const u = (t as { unref?: () => void } | undefined)?.unref;
  if (typeof u === "function") u.call(t);
}

/** A random (v4) UUID: `crypto.randomUUID`, or `getRandomValues` where that is missing (non-secure browser contexts). */
export function uuid(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = ((b[6] as number) & 0x0f) | 0x40;
  b[8] = ((b[8] as number) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
