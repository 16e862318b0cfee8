// A node:test reporter for scripts/run-tests.mjs: counts, per test file, the tests that ran
// (passed or failed), were skipped or todo, and writes one JSON object when the run ends. Suites
// and the runner's own per-file entry (named after the file; it reports a file that defines no
// test, or one that failed to load) are not tests.

export default async function* testFilesReporter(source) {
  const files = {};
  const entry = (file) => (files[file] ??= { ran: 0, passed: 0, failed: 0, skipped: 0, todo: 0, loadFailed: false, skipReasons: [] });
  for await (const event of source) {
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    const data = event.data ?? {};
    if (!data.file) continue;
    const e = entry(data.file);
    if (data.name === data.file) {
      // The file itself: a pass means it loaded and defined nothing; a fail means it did not load.
      if (event.type === "test:fail") e.loadFailed = true;
      continue;
    }
    if (data.skip !== undefined && data.skip !== false) {
      e.skipped++;
      if (typeof data.skip === "string" && !e.skipReasons.includes(data.skip)) e.skipReasons.push(data.skip);
      continue;
    }
    if (data.todo !== undefined && data.todo !== false) {
      e.todo++;
      continue;
    }
    if (data.details?.type === "suite") continue;
    e.ran++;
    if (event.type === "test:pass") e.passed++;
    else e.failed++;
  }
  yield `${JSON.stringify({ files })}\n`;
}
