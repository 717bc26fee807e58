// Opens two tabs in one headless Chromium (driven by playwright-core): the first
// must set window.netshimListening, then the second is opened; each sets
// window.netshimResult when done.
//
//   node two_tabs.mjs FIRST_URL SECOND_URL
//
// Prints one JSON line {"event": "second-done", "second": REPORT} once the second
// tab finished (the first keeps serving: the caller may now reach it by other
// means), then one line {"event": "done", "first": REPORT, "second": REPORT} when
// the first tab finished too.  A REPORT has the tab's result, the text of its
// #status and #log elements and its console messages.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [firstUrl, secondUrl] = process.argv.slice(2);
if (!firstUrl || !secondUrl) {
  console.error("usage: node two_tabs.mjs FIRST_URL SECOND_URL");
  process.exit(2);
}
const timeout = Number(process.env.NETSHIM_BROWSER_TIMEOUT ?? "120000");
const profile = mkdtempSync(join(tmpdir(), "netshim-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.NETSHIM_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // Background tabs must keep running their timers at full speed.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
  ],
  viewport: { width: 900, height: 640 },
});

async function open(url) {
  const page = await browser.newPage();
  const messages = [];
  page.on("console", (message) => messages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => messages.push(`pageerror: ${error.message}`));
  await page.goto(url);
  return { page, messages };
}

async function report({ page, messages }) {
  await page.waitForFunction(() => window.netshimResult !== undefined, null, { timeout });
  const seen = await page.evaluate(() => ({
    result: window.netshimResult,
    status: document.getElementById("status")?.textContent ?? null,
    state: document.getElementById("status")?.dataset.state ?? null,
    log: document.getElementById("log")?.textContent ?? null,
  }));
  return { ...seen, console: messages };
}

let status = 0;
try {
  const first = await open(firstUrl);
  await first.page.waitForFunction(
    () => window.netshimListening === true || window.netshimResult !== undefined, null, { timeout });
  const second = await open(secondUrl);
  const secondReport = await report(second);
  console.log(JSON.stringify({ event: "second-done", second: secondReport }));
  const firstReport = await report(first);
  console.log(JSON.stringify({ event: "done", first: firstReport, second: secondReport }));
} catch (error) {
  console.error(String(error.stack ?? error));
  status = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
