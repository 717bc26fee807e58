// Opens a page in Debian's headless Chromium (driven by playwright-core) and
// waits for it to set window.netshimResult.
//
//   node browser.mjs URL [SCREENSHOT.png]
//
// Prints one JSON object: the page's result, the text of its #status and #log
// elements, and the browser console's messages (for failure reports).  The
// browser gets a fresh profile and the flags that stop Chromium from reaching
// Google's hosts on its own, since tests may only touch loopback.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, screenshot] = process.argv.slice(2);
if (!url) {
  console.error("usage: node browser.mjs URL [SCREENSHOT.png]");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "netshim-chromium-"));
// Playwright passes the profile as --user-data-dir through a persistent context.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.NETSHIM_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // Extra flags from the test, space-separated (e.g. a test CA's SPKI to trust).
    ...(process.env.NETSHIM_CHROMIUM_ARGS ?? "").split(" ").filter(Boolean),
  ],
  viewport: { width: 900, height: 640 },
});
const consoleMessages = [];
let status = 0;
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (message) => consoleMessages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleMessages.push(`pageerror: ${error.message}`));
  await page.goto(url);
  const timeout = Number(process.env.NETSHIM_BROWSER_TIMEOUT ?? "120000");
  await page.waitForFunction(() => window.netshimResult !== undefined, null, { timeout });
  const report = await page.evaluate(() => ({
    result: window.netshimResult,
    status: document.getElementById("status")?.textContent ?? null,
    state: document.getElementById("status")?.dataset.state ?? null,
    log: document.getElementById("log")?.textContent ?? null,
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...report, userAgent: await page.evaluate(() => navigator.userAgent), console: consoleMessages }));
} catch (error) {
  console.error(String(error.stack ?? error));
  console.error(consoleMessages.join("\n"));
  status = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
