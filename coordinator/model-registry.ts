import type { KV } from "@nats-io/kv";
import { ModelRegistration } from "../proto/gen/shoal/v1/wire.js";
import { BUILTIN_MODELS } from "../shared/builtin-models.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { checkManifest, type ModelManifest } from "../shared/manifest.js";

/**
 * Models the coordinator can validate items for: the built-in ones, plus every manifest a worker
 * registered in the models bucket (a model dropped into some worker's model directory). Kept in
 * sync with the bucket by a watch, so a model becomes submittable as soon as a worker serves it.
 */
export class ModelRegistry {
  private readonly models = new Map<string, ModelManifest>();
  private watchStop: (() => void) | undefined;

  constructor(private readonly log: Logger) {
    for (const m of BUILTIN_MODELS) this.models.set(m.name, m);
  }

  async start(kv: KV): Promise<void> {
    const watch = await kv.watch({ include: "" as never });
    this.watchStop = () => watch.stop();
    let initialDone!: () => void;
    const initial = new Promise<void>((r) => (initialDone = r));
    void (async () => {
      for await (const e of watch) {
        if (e.operation === "PUT") this.register(e.key, e.value);
        else this.models.delete(e.key);
        if (e.delta === 0) initialDone();
      }
    })();
    // An empty bucket yields nothing: do not wait for an initial value that will not come.
    const status = await kv.status();
    if (status.values === 0) initialDone();
    await initial;
  }

  private register(key: string, value: Uint8Array): void {
    try {
      const reg = ModelRegistration.decode(value);
      const manifest = JSON.parse(reg.manifestJson) as ModelManifest;
      const problems = checkManifest(manifest);
      if (problems.length > 0 || manifest.name !== key) {
        this.log.warn({ model: key, problems }, "ignoring an invalid model registration");
        return;
      }
      if (this.models.get(key)?.builtin) return;
      this.models.set(key, manifest);
    } catch (err) {
      this.log.warn({ model: key, err: errorMessage(err) }, "ignoring an unreadable model registration");
    }
  }

  get(name: string): ModelManifest | undefined {
    return this.models.get(name);
  }

  all(): ModelManifest[] {
    return [...this.models.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  stop(): void {
    this.watchStop?.();
  }
}
