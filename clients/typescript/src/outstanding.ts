/**
 * Bookkeeping of one session's unanswered observations: which caller number
 * each has, which wire number it went out under, what must be (re)sent
 * when, and which answers are ready to hand to the caller in order.
 * A port of `crates/engram-client/src/outstanding.rs`.
 *
 * Two numberings meet here. The *caller* number is the submit order: 1, 2,
 * 3... never reused; answers go back in that order. The *wire* number is
 * what the server sees: per server session, from 1, +1 per observation
 * sent (rejected ones use their number too). They differ once an
 * overloaded observation is resent (under a new wire number) or a lost
 * session is replaced (wire numbers restart at 1). Pure logic, no I/O.
 */

import { Deque } from "./deque.js";
import type { AckMessage, ConsistencyToken, Episode, ObservationMessage, Priority, RejectReason } from "./protocol.js";

/** An observation the server accepted (durable and visible to later recalls). */
export interface ObservationAccepted {
  status: "accepted";
  /** The caller's number: 1, 2, 3... in submit order on this client. */
  sequence_number: number;
  /** The number it was accepted under on the wire (differs after retries or a new session). */
  wire_sequence_number: number;
  memory_id: string;
  server_sequence: number;
  committed_at: string;
  /** The space already held this episode id; nothing was stored twice. */
  duplicate: boolean;
  /** The server replayed its original answer after a resume. */
  replayed: boolean;
  /** Resends after `overloaded` rejections. */
  retries: number;
  /** Cluster mode: where it is stored (pass it as a recall's `after`); absent on a single node. */
  token?: ConsistencyToken;
}

/** An observation's final rejection. */
export interface ObservationRejected {
  status: "rejected";
  sequence_number: number;
  /** Absent when the client rejected it locally (e.g. closed before it was sent). */
  wire_sequence_number?: number;
  reason: RejectReason;
  message: string;
  retry_after_ms?: number;
  retries: number;
  episode: Episode;
}

export type ObservationResult = ObservationAccepted | ObservationRejected;

/** Resending observations rejected as `overloaded` (or `unavailable`). */
export interface RetryPolicy {
  /** Resends of one observation before its rejection goes to the caller. Default 20. */
  maxRetries: number;
  /** Wait when the server gave no `retry_after_ms`. Default 100 ms. */
  defaultDelayMs: number;
  /** Cap on one wait. Default 10 s. */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxRetries: 20,
  defaultDelayMs: 100,
  maxDelayMs: 10_000,
});

export function retryDelay(policy: RetryPolicy, retryAfterMs: number | undefined): number {
  const hinted = retryAfterMs && retryAfterMs > 0 ? retryAfterMs : policy.defaultDelayMs;
  return Math.min(hinted, policy.maxDelayMs);
}

const RETRYABLE: ReadonlySet<RejectReason> = new Set<RejectReason>(["overloaded", "unavailable"]);

type State = "waiting" | "on_wire" | "done";

interface Entry<P> {
  seq: number;
  episode: Episode;
  priority: Priority | undefined;
  retries: number;
  state: State;
  answer: ObservationResult | undefined;
  ticket: P;
}

export type AckOutcome =
  | { kind: "answered" }
  | { kind: "retrying"; sequenceNumber: number; retry: number; delayMs: number };

/** The unanswered observations of one client, each with a caller-owned `ticket`. */
export class Outstanding<P> {
  readonly #entries = new Deque<Entry<P>>();
  /** [wire, caller] of observations sent in this session, unanswered, in wire order. */
  readonly #onWire = new Deque<[number, number]>();
  /** [caller, earliest send time] to (re)send, in caller order. */
  readonly #waiting = new Deque<[number, number]>();
  #nextWire = 1;

  constructor(private readonly retry: RetryPolicy) {}

  /** Entries not yet handed to the caller. */
  get length(): number {
    return this.#entries.length;
  }
  get isEmpty(): boolean {
    return this.#entries.length === 0;
  }
  /** Observations sent in this session and not yet answered. */
  get onWireCount(): number {
    return this.#onWire.length;
  }
  /** The highest wire number sent in this session (0 before the first). */
  get highestSent(): number {
    return this.#nextWire - 1;
  }

  /** Adds a new observation with caller number `seq` (contiguous, +1 each). */
  push(seq: number, episode: Episode, priority: Priority | undefined, ticket: P, now: number): void {
    this.#entries.push({ seq, episode, priority, retries: 0, state: "waiting", answer: undefined, ticket });
    this.#waiting.push([seq, now]);
  }

  /** When the next observation may be sent, if one is waiting. */
  nextSendAt(): number | undefined {
    return this.#waiting.front()?.[1];
  }

  /** Takes the next waiting observation and numbers it for the wire. */
  takeNext(): ObservationMessage | undefined {
    const w = this.#waiting.shift();
    if (w === undefined) return undefined;
    const seq = w[0];
    const wire = this.#nextWire++;
    const e = this.#entry(seq);
    e.state = "on_wire";
    this.#onWire.push([wire, seq]);
    return observation(wire, e);
  }

  /**
   * Applies the server's ack. One that does not answer the oldest
   * observation on the wire, or an `out_of_order` rejection, means the two
   * sides disagree on numbering: returns an error message.
   */
  onAck(ack: AckMessage, now: number): AckOutcome | string {
    const front = this.#onWire.front();
    if (front === undefined) {
      return `ack for sequence ${ack.sequence_number} but no observation is waiting for one`;
    }
    const [wire, seq] = front;
    if (ack.sequence_number !== wire) {
      return `ack for sequence ${ack.sequence_number} but the oldest unanswered observation is ${wire}`;
    }
    if (ack.status !== "accepted" && ack.status !== "rejected") {
      return `ack for sequence ${wire} has status ${JSON.stringify((ack as { status?: unknown }).status)} (expected accepted or rejected)`;
    }
    if (ack.status === "rejected" && ack.reason === "out_of_order") {
      return `the server rejected sequence ${wire} as out of order: ${ack.message ?? ""}`;
    }
    this.#onWire.shift();
    const e = this.#entry(seq);
    if (ack.status === "accepted") {
      e.state = "done";
      e.answer = {
        status: "accepted",
        sequence_number: seq,
        wire_sequence_number: wire,
        memory_id: ack.memory_id,
        server_sequence: ack.server_sequence,
        committed_at: ack.committed_at,
        duplicate: ack.duplicate === true,
        replayed: ack.replayed === true,
        retries: e.retries,
      };
      if (ack.token !== undefined) e.answer.token = ack.token;
      return { kind: "answered" };
    }
    if (RETRYABLE.has(ack.reason) && e.retries < this.retry.maxRetries) {
      e.retries += 1;
      e.state = "waiting";
      const delayMs = retryDelay(this.retry, ack.retry_after_ms);
      this.#waiting.insertSorted([seq, now + delayMs], (x) => x[0]);
      return { kind: "retrying", sequenceNumber: seq, retry: e.retries, delayMs };
    }
    e.state = "done";
    e.answer = {
      status: "rejected",
      sequence_number: seq,
      wire_sequence_number: wire,
      reason: ack.reason,
      message: ack.message ?? "",
      ...(ack.retry_after_ms ? { retry_after_ms: ack.retry_after_ms } : {}),
      retries: e.retries,
      episode: e.episode,
    };
    return { kind: "answered" };
  }

  /** The next answer for the caller, once everything before it has one. */
  popAnswered(): [ObservationResult, P] | undefined {
    const f = this.#entries.front();
    if (f === undefined || f.state !== "done" || f.answer === undefined) return undefined;
    this.#entries.shift();
    return [f.answer, f.ticket];
  }

  /**
   * The session was resumed and the server's last answer was `lastAcked`:
   * returns every observation on the wire without an answer, to be resent
   * under the same numbers, in order (the server replays the answers it
   * had given). Returns a string when the server's position cannot be
   * reconciled with ours: the caller then starts a new session instead.
   */
  resume(lastAcked: number): ObservationMessage[] | string {
    const highest = this.highestSent;
    if (lastAcked > highest) {
      return `the server answered up to sequence ${lastAcked} but this client sent only up to ${highest}`;
    }
    const firstUnanswered = this.#onWire.front()?.[0] ?? this.#nextWire;
    if (lastAcked + 1 < firstUnanswered) {
      return `the server's last answer is sequence ${lastAcked}, but this client already has answers up to ${firstUnanswered - 1}`;
    }
    const out: ObservationMessage[] = [];
    for (const [wire, seq] of this.#onWire) out.push(observation(wire, this.#entry(seq)));
    return out;
  }

  /** The server lost the session: everything on the wire waits to be sent again, numbered from 1. */
  restartSession(now: number): void {
    for (const [, seq] of this.#onWire.clear()) {
      this.#entry(seq).state = "waiting";
      this.#waiting.insertSorted([seq, now], (x) => x[0]);
    }
    this.#nextWire = 1;
  }

  /**
   * Takes back the observation just returned by {@link takeNext} (not
   * written after all) and answers it with a local rejection; its wire
   * number is given back. Used for a message the server could not accept
   * at all (over `max_message_size`).
   */
  rejectLastTaken(reason: RejectReason, message: string): void {
    const last = this.#onWire.at(this.#onWire.length - 1);
    if (last === undefined || last[0] !== this.#nextWire - 1) throw new Error("internal: nothing was just taken");
    this.#onWire.pop();
    this.#nextWire -= 1;
    const e = this.#entry(last[1]);
    e.state = "done";
    e.answer = { status: "rejected", sequence_number: e.seq, reason, message, retries: e.retries, episode: e.episode };
  }

  /** Answers everything not yet sent (or waiting for a retry) with a local `closed` rejection. */
  rejectWaiting(message: string): void {
    for (const [seq] of this.#waiting.clear()) {
      const e = this.#entry(seq);
      e.state = "done";
      e.answer = closed(e, message);
    }
  }

  /** Answers everything still unanswered with a local `closed` rejection. */
  rejectAll(message: string): void {
    this.#waiting.clear();
    this.#onWire.clear();
    for (const e of this.#entries) {
      if (e.state !== "done") {
        e.state = "done";
        e.answer = closed(e, message);
      }
    }
  }

  /** Empties the bookkeeping after a fatal error: the tickets not yet answered, in order. */
  takeUnconfirmed(): Array<{ seq: number; episode: Episode; ticket: P; answer: ObservationResult | undefined }> {
    this.#waiting.clear();
    this.#onWire.clear();
    return this.#entries.clear().map((e) => ({ seq: e.seq, episode: e.episode, ticket: e.ticket, answer: e.answer }));
  }

  #entry(seq: number): Entry<P> {
    const first = this.#entries.front();
    const e = first === undefined ? undefined : this.#entries.at(seq - first.seq);
    if (e === undefined || e.seq !== seq) throw new Error(`internal: no entry for observation ${seq}`);
    return e;
  }
}

function observation<P>(wire: number, e: Entry<P>): ObservationMessage {
  const m: ObservationMessage = { type: "observation", sequence_number: wire, episode: e.episode };
  if (e.priority !== undefined && e.priority !== "normal") m.priority = e.priority;
  return m;
}

function closed<P>(e: Entry<P>, message: string): ObservationRejected {
  return {
    status: "rejected",
    sequence_number: e.seq,
    reason: "closed",
    message,
    retries: e.retries,
    episode: e.episode,
  };
}
