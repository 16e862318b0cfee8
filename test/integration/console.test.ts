// The web console (gateway/console), driven in a real browser: playwright-core and Debian's
// chromium against real processes (nats-server, a coordinator with API keys, a real imagegen
// worker and a simulated one, the gateway). The test types the key, submits a batch from the
// page, watches its grid fill in as items finish (images load from their signed URLs), reads a
// failed item's code and message, presses retry, checks the fleet view against
// FleetService.ListWorkers and the usage page against GET /v1/usage. With
// SHOAL_WRITE_SCREENSHOTS=1 it writes docs/console-*.png.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { createClients, type ShoalClients } from "../../cli/client.js";
import { withDeadlines } from "../harness/client.js";
import { checkResponse } from "../harness/openapi.js";
import { ROOT, Stack } from "../harness/processes.js";

const KEY = "sk_live_console_0123456789";
/** A second tenant, with a plan: its limits are shown on the usage page. */
const ACME_KEY = "sk_live_acme_0123456789";
const ACME_LIMITS = { max_items_per_batch: 50, items_per_day: 100 };
const CHROMIUM = process.env.SHOAL_CHROMIUM ?? "/usr/bin/chromium";
/** Deadline of one browser step (a click, a wait for the page to show something). */
const STEP_MS = 30_000;
/** Deadline of waits that last as long as a batch. */
const BATCH_MS = 180_000;
const WRITE_SCREENSHOTS = process.env.SHOAL_WRITE_SCREENSHOTS === "1";

let stack: Stack;
let base = "";
let sdk: ShoalClients;
let browser: Browser | undefined;
let page: Page;

async function api(path: string, init: RequestInit = {}): Promise<any> {
  const res = await fetch(base + path, { ...init, headers: { authorization: `Bearer ${KEY}`, ...init.headers }, signal: AbortSignal.timeout(STEP_MS) });
  const json = await res.json();
  checkResponse(init.method ?? "GET", res.url, res, json);
  assert.equal(res.status, 200, JSON.stringify(json));
  return json;
}

async function screenshot(name: string): Promise<void> {
  if (!WRITE_SCREENSHOTS) return;
  await page.screenshot({ path: join(ROOT, "docs", name), fullPage: true, timeout: STEP_MS });
}

describe("console", () => {
  before(async () => {
    // Without chromium the test fails and says why (setup.sh installs it).
    assert.ok(existsSync(CHROMIUM), `chromium is not installed at ${CHROMIUM} (apt-get install chromium, or set SHOAL_CHROMIUM)`);
    stack = new Stack();
    await stack.startNats();
    // A short grace, so an item no GPU can hold fails soon (OUT_OF_MEMORY, retryable).
    // An operator key: the fleet view shows load and free VRAM, which tenants' keys do not see.
    const keysFile = join(stack.dir, "keys.json");
    writeFileSync(
      keysFile,
      JSON.stringify({ tenants: [{ name: "console", keys: [KEY], role: "operator" }, { name: "acme", keys: [ACME_KEY], limits: ACME_LIMITS }] }),
    );
    await stack.startCoordinator(["--api-keys-file", keysFile, "--unplaceable-grace", "1s"]);
    await stack.startWorker("w-img", ["--vram", "4GiB"]);
    // 7 GiB: one sim-6g item (4 GB weights + 2 GB activations) fits, a second waits in the queue.
    await stack.startWorker("w-sim", ["--vram", "7GiB", "--simulate"]);
    const gw = await stack.startGateway([], { SHOAL_URL_SIGNING_KEY: "console-test-signing-key-0123456789abcdef" });
    base = gw.url;
    sdk = withDeadlines(createClients(stack.grpcAddr, KEY));
    const deadline = Date.now() + 90_000;
    for (;;) {
      const models = await sdk.listModels().catch(() => []);
      const served = (name: string) => (models.find((m) => m.name === name)?.servedBy.length ?? 0) > 0;
      if (served("imagegen-tiny") && served("sim-zero")) break;
      assert.ok(Date.now() < deadline, "workers not ready");
      await new Promise((r) => setTimeout(r, 200));
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-background-networking"], timeout: STEP_MS });
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    // The page's own errors and console output, so a failing step shows why.
    page.on("pageerror", (err) => console.error(`[page error] ${err.message}`));
    page.on("console", (msg) => {
      if (msg.type() === "error" || msg.type() === "warning") console.error(`[page ${msg.type()}] ${msg.text()}`);
    });
    page.setDefaultTimeout(STEP_MS);
    page.setDefaultNavigationTimeout(STEP_MS);
  });

  after(async () => {
    await browser?.close();
    sdk?.close();
    await stack?.stop();
  });

  test("console - served with a CSP that allows no inline script, and nosniff", async () => {
    const res = await fetch(`${base}/`, { signal: AbortSignal.timeout(STEP_MS) });
    checkResponse("GET", res.url, res, undefined);
    assert.equal(res.status, 200);
    const csp = res.headers.get("content-security-policy") ?? "";
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    const html = await res.text();
    assert.doesNotMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, "no inline script in the page");
    // The list route the page reads refuses a bad page size with the field named.
    const bad = await fetch(`${base}/v1/batches?page_size=0`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(STEP_MS) });
    const body = await bad.json();
    checkResponse("GET", bad.url, bad, body);
    assert.equal(bad.status, 400);
    assert.match(body.error.fields[0], /^page_size: /);
  });

  test("console - asks for the key, refuses a wrong one, opens with the right one", async () => {
    await page.goto(`${base}/`);
    await page.locator("#login").waitFor({ state: "visible" });
    await page.fill("#api-key", "sk_wrong_key_000");
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error").filter({ hasText: /key/i }).waitFor();
    assert.equal(await page.locator("#nav").isVisible(), false);
    await page.fill("#api-key", KEY);
    await page.click("#login-form button[type=submit]");
    await page.locator("#nav").waitFor({ state: "visible" });
    assert.equal(await page.evaluate(() => sessionStorage.getItem("shoal.apiKey")), KEY);
  });

  test("console - the fleet view shows what ListWorkers says: worker ids, GPUs, VRAM totals", async () => {
    await page.goto(`${base}/#/fleet`);
    const workers = await sdk.listWorkers();
    assert.equal(workers.length, 2);
    await page.locator("[data-worker-id]").nth(workers.length - 1).waitFor();
    const shown = await page.$$eval("[data-worker-id]", (els) =>
      els.map((e) => ({
        id: e.getAttribute("data-worker-id"),
        state: e.querySelector(".badge")?.textContent,
        gpus: [...e.querySelectorAll("[data-gpu-index]")].map((g) => Number(g.getAttribute("data-vram-total"))),
        bars: e.querySelectorAll(".bar .seg").length,
      })),
    );
    assert.deepEqual(shown.map((w) => w.id).sort(), workers.map((w) => w.id).sort());
    for (const w of workers) {
      const s = shown.find((x) => x.id === w.id)!;
      assert.equal(s.state, "ready");
      assert.deepEqual(s.gpus, w.gpus.map((g) => g.vramTotalBytes), `GPUs of ${w.id}`);
      assert.equal(s.bars, 3 * w.gpus.length, "used / reserved / free per GPU");
    }
    const total = workers.flatMap((w) => w.gpus).reduce((s, g) => s + g.vramTotalBytes, 0);
    const summary = page.locator("#fleet-summary");
    assert.equal(Number(await summary.getAttribute("data-vram-total")), total);
    assert.equal(Number(await summary.getAttribute("data-gpus")), workers.flatMap((w) => w.gpus).length);
    // The API route the page reads is in the OpenAPI document and says the same.
    const viaHttp = await api("/v1/workers");
    assert.deepEqual(viaHttp.workers.map((w: any) => w.worker_id).sort(), workers.map((w) => w.id).sort());
  });

  test("console - a batch submitted from the page fills its grid in live, shows the failure, and retry answers", async () => {
    const hostile = `<img src=x onerror="window.__pwned=1">Lighthouse at dusk`;
    const lines = [
      "Modern living room, minimalist design, natural light",
      "Cozy bedroom, warm lighting, plants",
      hostile,
      // Simulated models (worker/simulated-backend.ts): one that fails, and two that each hold
      // 6 GB of w-sim's 7 GiB for 20 s, one after the other, so the grid is seen part-filled,
      // the fleet busy and the queue non-empty.
      JSON.stringify({ model: "sim-zero", fail: true }),
      JSON.stringify({ model: "sim-6g", work_ms: 20000, tag: "slow 1" }),
      JSON.stringify({ model: "sim-6g", work_ms: 20000, tag: "slow 2" }),
    ];
    await page.goto(`${base}/#/new`);
    await page.fill("#prompts", lines.join("\n"));
    await page.fill("#width", "128");
    await page.fill("#height", "96");
    await page.selectOption("#format", "jpeg");
    await page.click("#submit-batch");
    await page.waitForURL(/#\/batch\/b_/);
    const batchId = decodeURIComponent(new URL(page.url()).hash.slice("#/batch/".length));
    await page.locator("#grid .cell").nth(lines.length - 1).waitFor({ state: "attached" });

    // Part-filled: the three images loaded (decoded at their size), the slow item still waiting.
    await page.waitForFunction(
      () => {
        const imgs = [...document.querySelectorAll<HTMLImageElement>("#grid .cell.success img")];
        return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0);
      },
      undefined,
      { timeout: BATCH_MS },
    );
    const slowWaiting = await page.locator('#grid .cell[data-index="5"]').getAttribute("class");
    assert.match(slowWaiting ?? "", /waiting/, "the slow item is still waiting while the others are shown");
    assert.equal((await sdk.getBatch(batchId)).results.length, 0, "the batch is not finished yet: the grid filled from events");
    const sizes = await page.$$eval("#grid .cell.success img", (els) => els.map((i) => [(i as HTMLImageElement).naturalWidth, (i as HTMLImageElement).naturalHeight]));
    assert.deepEqual(sizes, [[128, 96], [128, 96], [128, 96]]);
    await screenshot("console-batch-running.png");

    // Meanwhile the fleet view shows the slow item in flight on w-sim, as ListWorkers does.
    await page.goto(`${base}/#/fleet`);
    const busy = page.locator('[data-worker-id="w-sim"] .in-flight');
    await busy.filter({ hasText: /^1$/ }).waitFor();
    const wSim = (await sdk.listWorkers()).find((w) => w.id === "w-sim")!;
    assert.equal(wSim.itemsInFlight, 1, "ListWorkers agrees: one item in flight on w-sim");
    assert.match((await page.locator('[data-worker-id="w-sim"] .resident').textContent()) ?? "", /sim-6g/);
    await screenshot("console-fleet.png");

    // And the queue view shows the second sim-6g item waiting, with the VRAM it will need.
    await page.goto(`${base}/#/queue`);
    const queued = page.locator('#queue tr[data-model="sim-6g"][data-queued-items="1"]');
    await queued.waitFor();
    const sim6g = (await sdk.listModels()).find((m) => m.name === "sim-6g")!;
    assert.equal(sim6g.queuedItems, 1, "ListModels agrees: one sim-6g item waiting");
    assert.equal(Number(await queued.getAttribute("data-queued-vram")), sim6g.queuedVramBytes);
    assert.ok(sim6g.queuedVramBytes > 0, "the waiting item needs VRAM");
    await screenshot("console-queue.png");
    await page.goto(`${base}/#/batch/${encodeURIComponent(batchId)}`);

    // Finished: the failure's code and message as the API gives them; the prompt shown as text.
    await page.locator("#batch-status[data-status=completed]").waitFor({ timeout: BATCH_MS });
    await page.locator('#grid .cell[data-index="5"].success').waitFor();
    const fromApi = await api(`/v1/batch/${encodeURIComponent(batchId)}`);
    const failed = fromApi.results[3];
    assert.equal(failed.status, "failed");
    const cell = page.locator('#grid .cell[data-index="3"]');
    assert.equal(await cell.locator(".error-code").textContent(), failed.error_code);
    assert.equal(await cell.locator(".error-message").textContent(), failed.error);
    assert.equal(failed.error_code, "inference_failed");
    assert.equal(await page.locator('#grid .cell[data-index="2"] figcaption').textContent(), hostile);
    assert.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined, "the prompt ran as markup");
    assert.equal(await page.locator('#grid img[src="x"]').count(), 0);
    assert.match((await page.locator("#batch-status").textContent()) ?? "", /5 succeeded · 1 failed/);
    await screenshot("console-batch.png");

    // The batch list shows it with its counts.
    await page.goto(`${base}/#/batches`);
    const row = page.locator(`#batches tr[data-batch-id="${batchId}"]`);
    await row.waitFor();
    assert.equal(await row.locator(".badge").textContent(), "completed");
    const listed = (await api("/v1/batches?page_size=10")).batches.find((b: any) => b.batch_id === batchId);
    assert.deepEqual([listed.total, listed.succeeded, listed.failed], [6, 5, 1]);
    assert.deepEqual(
      await row.locator("td.num").evaluateAll((tds) => tds.slice(0, 3).map((t) => t.textContent)),
      [String(listed.succeeded), String(listed.failed), String(listed.cancelled)],
    );

    // Retry: the simulated failure is not retryable, and the page says what the API answered.
    await row.locator("a").click();
    await page.locator("#retry").waitFor({ state: "visible" });
    await page.click("#retry");
    await page.locator("#batch-message").filter({ hasText: "conflict" }).waitFor();
    assert.match((await page.locator("#batch-message").textContent()) ?? "", /no failed items with a retryable error/);
  });

  test("console - retry on a retryable failure opens the new batch", async () => {
    await page.goto(`${base}/#/new`);
    // sim-30g needs 30 GB; w-sim has 7 GiB: unplaceable, so OUT_OF_MEMORY (retryable).
    await page.fill("#prompts", JSON.stringify({ model: "sim-30g", tag: "too big" }));
    await page.click("#submit-batch");
    await page.waitForURL(/#\/batch\/b_/);
    const first = decodeURIComponent(new URL(page.url()).hash.slice("#/batch/".length));
    await page.locator("#batch-status[data-status=failed]").waitFor({ timeout: BATCH_MS });
    const code = page.locator('#grid .cell[data-index="0"] .error-code');
    await code.waitFor();
    assert.equal(await code.textContent(), "out_of_memory");
    assert.match((await page.locator('#grid .cell[data-index="0"] .error-message').textContent()) ?? "", /needs \d+ bytes of VRAM/);
    await page.click("#retry");
    await page.waitForFunction((old) => location.hash.startsWith("#/batch/b_") && location.hash !== `#/batch/${old}`, first);
    const second = decodeURIComponent(new URL(page.url()).hash.slice("#/batch/".length));
    assert.equal(await page.locator("#batch-id").textContent(), second);
    const retried = await api(`/v1/batch/${encodeURIComponent(second)}`);
    assert.equal(retried.total, 1, "the new batch holds the one retryable request");
    await page.locator("#grid .cell").first().waitFor();
  });

  test("console - cancel stops a running batch from its page", async () => {
    await page.goto(`${base}/#/new`);
    await page.fill("#prompts", [1, 2].map((i) => JSON.stringify({ model: "sim-zero", work_ms: 120000, tag: `long ${i}` })).join("\n"));
    await page.click("#submit-batch");
    await page.waitForURL(/#\/batch\/b_/);
    const id = decodeURIComponent(new URL(page.url()).hash.slice("#/batch/".length));
    await page.locator("#cancel").waitFor({ state: "visible" });
    await page.click("#cancel");
    await page.locator("#batch-status[data-status=cancelled]").waitFor();
    assert.equal((await api(`/v1/batch/${encodeURIComponent(id)}`)).status, "cancelled");
    await page.locator("#grid .cell.failed .error-code").first().waitFor();
    assert.deepEqual(await page.locator("#grid .error-code").allTextContents(), ["cancelled", "cancelled"]);
  });

  test("console - the usage page shows GET /v1/usage per tenant and day, and the tenants' limits", async () => {
    // A batch of the other tenant, so the page has two tenants' rows.
    const res = await fetch(`${base}/v1/batch`, {
      method: "POST",
      headers: { authorization: `Bearer ${ACME_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ requests: [{ model: "sim-zero", tag: "acme 1" }, { model: "sim-zero", tag: "acme 2" }] }),
      signal: AbortSignal.timeout(BATCH_MS),
    });
    assert.equal(res.status, 200, await res.clone().text());
    await page.goto(`${base}/#/usage`);
    await page.locator("#usage tbody tr").first().waitFor();
    const readPage = () =>
      page.$$eval("#usage tbody tr", (rows) =>
        rows.map((r) => {
          const cell = (c: string) => r.querySelector(`td.${c}`)?.textContent ?? "";
          return [r.getAttribute("data-day"), r.getAttribute("data-tenant"), cell("succeeded"), cell("failed"), cell("cancelled"), cell("content-policy"), cell("accepted"), cell("gpu-seconds")].join(" ");
        }),
      );
    const fromApi = (days: any[]) =>
      [...days].reverse().map((d) => [d.day, d.tenant, d.succeeded, d.failed, d.cancelled, d.content_policy, d.accepted, d.gpu_seconds.toFixed(3)].join(" "));
    // Batches of the earlier tests may still be finishing: the page refreshes every 2 s, so
    // it must come to show what the API says.
    let usage: any;
    let shown: string[] = [];
    const deadline = Date.now() + BATCH_MS;
    for (;;) {
      usage = await api("/v1/usage");
      shown = await readPage();
      if (JSON.stringify(shown) === JSON.stringify(fromApi(usage.days)) || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(shown, fromApi(usage.days));
    const today = new Date().toISOString().slice(0, 10);
    const console_ = usage.days.find((d: any) => d.tenant === "console" && d.day === today);
    assert.ok(console_ && console_.succeeded >= 5 && console_.failed >= 1 && console_.cancelled === 2 && console_.gpu_seconds > 0, JSON.stringify(usage.days));
    const acme = usage.days.find((d: any) => d.tenant === "acme" && d.day === today);
    assert.deepEqual([acme?.accepted, acme?.succeeded], [2, 2]);
    // Totals under the table are the sums of the API's rows.
    const sum = (k: string) => usage.days.reduce((s: number, d: any) => s + d[k], 0);
    assert.equal(await page.locator("#usage tfoot td.succeeded").textContent(), String(sum("succeeded")));
    assert.equal(await page.locator("#usage tfoot td.gpu-seconds").textContent(), sum("gpu_seconds").toFixed(3));

    // Limits: acme's from the keys file, with what it used of items_per_day today.
    assert.deepEqual(usage.limits, [{ tenant: "acme", max_items_per_batch: 50, items_per_day: 100, max_queued_items: null }]);
    const limits = page.locator('#usage-limits tr[data-tenant="acme"]');
    assert.deepEqual(
      await limits.locator("td.num").allTextContents(),
      ["50", "100", `${acme.accepted} of 100`, "none"],
    );
    assert.equal(await page.locator('#usage-limits tr[data-tenant="console"]').count(), 0, "a tenant without limits has no row");
    await screenshot("console-usage.png");
  });
});
