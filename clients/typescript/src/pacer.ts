/**
 * Send pacing for flow control: after the server's SLOW_DOWN (`status`
 * with `backpressure`) the session sends at most the suggested rate until
 * the server says `active` again.
 */

/**
 * A rate below this is taken as this: one observation a second still lets
 * the server see the stream is alive and keeps a bogus tiny rate from
 * parking a stream for hours.
 */
export const MIN_RATE = 1;

/** Spaces sends `1 / rate` apart while a rate is set; free otherwise. Times in ms. */
export class Pacer {
  #intervalMs: number | undefined;
  #next: number | undefined;

  /** Starts (or changes) pacing; a rate that is not a positive finite number is ignored. */
  setRate(perSecond: number | undefined): void {
    if (perSecond === undefined || !Number.isFinite(perSecond) || perSecond <= 0) return;
    this.#intervalMs = 1000 / Math.max(perSecond, MIN_RATE);
  }

  clear(): void {
    this.#intervalMs = undefined;
    this.#next = undefined;
  }

  /** The rate being enforced (obs/s), if any. */
  get rate(): number | undefined {
    return this.#intervalMs === undefined ? undefined : 1000 / this.#intervalMs;
  }

  /** When the next send may go; `undefined` means now. */
  readyAt(): number | undefined {
    return this.#intervalMs === undefined ? undefined : this.#next;
  }

  /** Records a send at `now`. */
  onSent(now: number): void {
    const interval = this.#intervalMs;
    if (interval === undefined) return;
    // Late timers must not lower the rate, but idle time must not build up
    // a burst either: credit at most one interval of lateness.
    const base = this.#next !== undefined && this.#next + interval > now ? this.#next : now;
    this.#next = base + interval;
  }
}
