/** Reconnect delays: exponential, capped, jittered, bounded in count. */

export interface BackoffPolicy {
  /** First delay, ms. Default 100. */
  initialMs: number;
  /** Cap on one delay, ms. Default 5000. */
  maxMs: number;
  /** Growth per attempt. Default 2. */
  multiplier: number;
  /** Failed attempts in a row before the session fails. Default 15. */
  maxAttempts: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = Object.freeze({
  initialMs: 100,
  maxMs: 5000,
  multiplier: 2,
  maxAttempts: 15,
});

/**
 * `min(max, initial * multiplier^attempt)` scaled into [0.5, 1] of itself
 * by `unit` ("equal jitter": never less than half, so a fleet of clients
 * cut off by one restart spreads out without any retrying too eagerly).
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, unit: number): number {
  const grown = policy.initialMs * Math.pow(Math.max(1, policy.multiplier), Math.min(attempt, 64));
  const base = Math.min(grown, policy.maxMs);
  const u = Math.min(1, Math.max(0, unit));
  return base * (0.5 + 0.5 * u);
}

/** One run of reconnect attempts. */
export class Backoff {
  #attempts = 0;
  constructor(
    private readonly policy: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {}

  get attempts(): number {
    return this.#attempts;
  }

  /** The wait before the next attempt, or `undefined` once `maxAttempts` are used. */
  next(): number | undefined {
    if (this.#attempts >= this.policy.maxAttempts) return undefined;
    const d = backoffDelay(this.policy, this.#attempts, this.random());
    this.#attempts += 1;
    return d;
  }

  reset(): void {
    this.#attempts = 0;
  }
}
