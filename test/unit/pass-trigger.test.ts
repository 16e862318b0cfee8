import { test } from "node:test";
import assert from "node:assert/strict";
import { PassTrigger } from "../../coordinator/pass-trigger.js";

const turn = () => new Promise((r) => setImmediate(r));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("pass trigger - requests before a pass share it; after a quiet spell a pass runs in the next turn", async () => {
  let clock = 1000;
  let runs = 0;
  const trigger = new PassTrigger(() => runs++, 5, () => clock);
  trigger.request();
  trigger.request();
  trigger.request();
  assert.equal(runs, 0, "never inside the caller");
  await turn();
  assert.equal(runs, 1, "three requests, one pass");
  clock += 50; // quiet for longer than the gap
  trigger.request();
  await turn();
  assert.equal(runs, 2, "no wait after a quiet spell");
  trigger.stop();
});

test("pass trigger - a request within the gap waits out the rest of it, and stop() drops it", async () => {
  let clock = 0;
  let runs = 0;
  const trigger = new PassTrigger(() => runs++, 40, () => clock);
  trigger.request();
  await turn();
  assert.equal(runs, 1);
  clock += 1; // 1 ms after the pass: the next may start 39 ms later
  trigger.request();
  await turn();
  await turn();
  assert.equal(runs, 1, "not before the gap is over");
  await sleep(80);
  assert.equal(runs, 2, "then it runs");
  clock += 1;
  trigger.request();
  trigger.stop();
  trigger.stop();
  await sleep(80);
  assert.equal(runs, 2, "a stopped trigger runs nothing");
  // A request after stop() is served again (a new term of the coordinator does not reuse it, but the trigger itself is not broken).
  clock += 100;
  trigger.request();
  await turn();
  assert.equal(runs, 3);
  trigger.stop();
});

test("pass trigger - requestIn runs a pass later, keeps the soonest of several, and stop() drops it", async () => {
  let runs = 0;
  const trigger = new PassTrigger(() => runs++, 1);
  trigger.requestIn(200);
  trigger.requestIn(20); // sooner: replaces the 200 ms one
  trigger.requestIn(500); // later than the one set: ignored
  await sleep(5);
  assert.equal(runs, 0, "not before its time");
  await sleep(60);
  assert.equal(runs, 1, "the soonest ran");
  await sleep(250);
  assert.equal(runs, 1, "the replaced and the ignored ones never run");
  trigger.requestIn(20);
  trigger.stop();
  await sleep(60);
  assert.equal(runs, 1, "a stopped trigger runs nothing");
});
