import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_ITEM_MS, DurationModel, gpuTypeOf } from "../../coordinator/scheduler/durations.js";

const A100 = gpuTypeOf("NVIDIA A100-SXM4-80GB", 80e9);
const T4 = gpuTypeOf("Tesla T4", 16e9);

test("durations - the GPU type key is the name and the size in whole GB", () => {
  assert.equal(gpuTypeOf("Tesla T4", 15.9e9), "Tesla T4 16GB");
  assert.equal(gpuTypeOf("  ", 24e9), "unknown 24GB");
  assert.notEqual(gpuTypeOf("cpu (simulated VRAM budget)", 80e9), gpuTypeOf("cpu (simulated VRAM budget)", 16e9));
});

test("durations - nothing learned: the declared duration, else the default", () => {
  const m = new DurationModel();
  assert.deepEqual(m.predict({ model: "m", shape: "m|512x512", gpuType: A100 }), { ms: DEFAULT_ITEM_MS, samples: 0, source: "default" });
  assert.deepEqual(m.predict({ model: "m", shape: "m|512x512" }, 250), { ms: 250, samples: 0, source: "declared" });
  assert.equal(new DurationModel({ defaultMs: 40 }).predict({ model: "m", shape: "s" }).ms, 40);
  assert.throws(() => new DurationModel({ alpha: 0 }), RangeError);
});

test("durations - the exact key answers once observed, as the mean of its first samples", () => {
  const m = new DurationModel();
  const k = { model: "m", shape: "m|512x512", gpuType: A100 };
  m.observe(k, 100);
  m.observe(k, 200);
  m.observe(k, 300);
  assert.deepEqual(m.predict(k), { ms: 200, samples: 3, source: "exact" });
  assert.equal(m.version, 3);
});

test("durations - another GPU type is predicted from the same shape elsewhere, scaled by the types' observed ratio", () => {
  const m = new DurationModel();
  const s = "m|512x512";
  // Both GPU types ran another shape: the T4 three times as long as the A100.
  for (let i = 0; i < 20; i++) {
    m.observe({ model: "other", shape: "other|64x64", gpuType: A100 }, 100);
    m.observe({ model: "other", shape: "other|64x64", gpuType: T4 }, 300);
  }
  for (let i = 0; i < 10; i++) m.observe({ model: "m", shape: s, gpuType: A100 }, 1000);
  const onT4 = m.predict({ model: "m", shape: s, gpuType: T4 });
  assert.equal(onT4.source, "shape");
  assert.ok(Math.abs(m.ratio(T4, A100)! - 3) < 0.01, `T4 / A100 ${m.ratio(T4, A100)}`);
  assert.ok(Math.abs(m.ratio(A100, T4)! - 1 / 3) < 0.01, `A100 / T4 ${m.ratio(A100, T4)}`);
  assert.ok(Math.abs(onT4.ms - 3000) < 1, `predicted ${onT4.ms} ms on the slower GPU`);
  assert.equal(onT4.samples, 10);
  // The model level scales the same way for a shape the T4 never ran.
  assert.equal(m.predict({ model: "m", shape: "m|64x64", gpuType: T4 }).source, "model");
  assert.ok(Math.abs(m.predict({ model: "m", shape: "m|64x64", gpuType: T4 }).ms - 3000) < 1);
  assert.equal(m.ratio("new 8GB", A100), undefined);
  // A GPU type never seen counts as average: the pooled shape mean as it is.
  assert.deepEqual(m.predict({ model: "m", shape: s, gpuType: "new 8GB" }), { ms: 1000, samples: 10, source: "shape" });
});

test("durations - a shape never seen falls back to the model's mean; without a GPU type the pooled mean answers", () => {
  const m = new DurationModel();
  m.observe({ model: "m", shape: "m|256x256", gpuType: A100 }, 100);
  m.observe({ model: "m", shape: "m|1024x1024", gpuType: A100 }, 300);
  assert.deepEqual(m.predict({ model: "m", shape: "m|512x512" }), { ms: 200, samples: 2, source: "model" });
  assert.deepEqual(m.predict({ model: "m", shape: "m|1024x1024" }), { ms: 300, samples: 1, source: "shape" });
  // Learned beats declared.
  assert.equal(m.predict({ model: "m", shape: "m|512x512" }, 5).source, "model");
});

test("durations - one outlier moves an established estimate by a bounded step", () => {
  const m = new DurationModel();
  const k = { model: "m", shape: "s", gpuType: A100 };
  for (let i = 0; i < 50; i++) m.observe(k, 100);
  m.observe(k, 1_000_000);
  const after = m.predict(k).ms;
  assert.ok(after > 100);
  assert.ok(after < 130, `one 1,000 s sample moved the mean to ${after} ms`);
  m.observe(k, 0);
  assert.ok(m.predict(k).ms > 90);
  // Garbage is ignored outright.
  m.observe(k, Number.NaN);
  m.observe(k, -5);
  assert.equal(m.predict(k).samples, 52);
});

test("durations - a lasting change is followed", () => {
  const m = new DurationModel();
  const k = { model: "m", shape: "s", gpuType: A100 };
  for (let i = 0; i < 100; i++) m.observe(k, 100);
  for (let i = 0; i < 150; i++) m.observe(k, 400);
  const now = m.predict(k).ms;
  assert.ok(now > 380 && now <= 400, `after 150 samples at 400 ms the estimate is ${now}`);
});

test("durations - the mean of a skewed distribution is estimated without bias (what sums of durations need)", () => {
  const m = new DurationModel();
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const samples: number[] = [];
  for (let i = 0; i < 4000; i++) {
    // log-normal, σ 0.6: mean is e^0.18 ≈ 1.2 × the median
    const z = Math.sqrt(-2 * Math.log(rand() || 1e-9)) * Math.cos(2 * Math.PI * rand());
    const x = 1000 * Math.exp(0.6 * z);
    samples.push(x);
    m.observe({ model: "m", shape: "s", gpuType: A100 }, x);
  }
  const trueMean = samples.reduce((a, b) => a + b, 0) / samples.length;
  const est = m.predict({ model: "m", shape: "s" }).ms;
  assert.ok(Math.abs(est / trueMean - 1) < 0.2, `estimated ${est}, mean ${trueMean}`);
});

test("durations - snapshot and restore keep every level; damaged entries are dropped", () => {
  const m = new DurationModel();
  for (let i = 0; i < 10; i++) {
    m.observe({ model: "m", shape: "s", gpuType: A100 }, 100);
    m.observe({ model: "m", shape: "s", gpuType: T4 }, 300);
  }
  const snap = JSON.parse(JSON.stringify(m.snapshot()));
  const r = DurationModel.restore(snap);
  for (const k of [{ model: "m", shape: "s", gpuType: A100 }, { model: "m", shape: "s", gpuType: T4 }, { model: "m", shape: "s" }, { model: "m", shape: "x", gpuType: T4 }]) {
    assert.deepEqual(r.predict(k), m.predict(k));
  }
  assert.equal(r.ratio(T4, A100), m.ratio(T4, A100));
  snap.stats.push(["bad", "NaN", 1], ["worse", -1, 3], 7);
  assert.equal(DurationModel.restore(snap).size, m.size);
  assert.equal(DurationModel.restore({ v: 99 }).size, 0);
  assert.equal(DurationModel.restore(null).size, 0);
  assert.equal(DurationModel.restore("garbage").size, 0);
});

test("durations - the number of keys is bounded; the least recently observed go first", () => {
  const m = new DurationModel({ maxKeys: 50 });
  for (let i = 0; i < 200; i++) m.observe({ model: "m", shape: `s${i}`, gpuType: A100 }, 100 + i);
  assert.ok(m.size <= 50, `${m.size} keys`);
  assert.equal(m.predict({ model: "m", shape: "s199", gpuType: A100 }).source, "exact");
  assert.notEqual(m.predict({ model: "m", shape: "s0", gpuType: A100 }).source, "exact");
});
