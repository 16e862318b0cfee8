// The models a thread keeps loaded, least recently used first out. A load in progress is
// shared, so two items for a cold model load it once.

export interface LoadedModel {
  release(): Promise<void>;
}

export class ModelCache<M extends LoadedModel> {
  private readonly entries = new Map<string, Promise<M>>();

  constructor(
    private readonly capacity: number,
    private readonly load: (name: string) => Promise<M>,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`model cache capacity must be ≥ 1 (got ${capacity})`);
  }

  async get(name: string): Promise<M> {
    let entry = this.entries.get(name);
    if (entry !== undefined) {
      // Re-insert: Map order is the recency order.
      this.entries.delete(name);
      this.entries.set(name, entry);
      return entry;
    }
    entry = this.load(name);
    this.entries.set(name, entry);
    entry.catch(() => {
      if (this.entries.get(name) === entry) this.entries.delete(name);
    });
    const model = await entry;
    await this.evict();
    return model;
  }

  /** Names of the loaded (or loading) models, most recently used last. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /** Releases one model now (defragmentation); false when it was not loaded. */
  async remove(name: string): Promise<boolean> {
    const entry = this.entries.get(name);
    if (entry === undefined) return false;
    this.entries.delete(name);
    await entry.then((m) => m.release()).catch(() => {});
    return true;
  }

  async clear(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.allSettled(all.map(async (m) => (await m).release()));
  }

  private async evict(): Promise<void> {
    while (this.entries.size > this.capacity) {
      const [name, oldest] = this.entries.entries().next().value as [string, Promise<M>];
      this.entries.delete(name);
      await oldest.then((m) => m.release()).catch(() => {});
    }
  }
}
