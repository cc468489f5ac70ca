/** A FIFO with O(1) push/shift (amortised) and indexed access. */
export class Deque<T> {
  #items: (T | undefined)[] = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    this.#items.push(item);
  }

  /** The item at `i` from the front (0 = front). */
  at(i: number): T | undefined {
    return i < 0 ? undefined : this.#items[this.#head + i];
  }

  front(): T | undefined {
    return this.#items[this.#head];
  }

  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head += 1;
    if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Removes and returns the back item. */
  pop(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    return this.#items.pop();
  }

  /** Inserts keeping the deque sorted by `key` (ascending); scans from the back. */
  insertSorted(item: T, key: (t: T) => number): void {
    const k = key(item);
    let i = this.#items.length;
    while (i > this.#head && key(this.#items[i - 1] as T) > k) i -= 1;
    this.#items.splice(i, 0, item);
  }

  clear(): T[] {
    const rest = this.#items.slice(this.#head) as T[];
    this.#items = [];
    this.#head = 0;
    return rest;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.#head; i < this.#items.length; i++) yield this.#items[i] as T;
  }
}
