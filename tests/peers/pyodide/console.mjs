// Types code into netshim pyodide serve's console page in Debian's headless
// Chromium (driven by playwright-core) and reports what the console showed.
//
//   node console.mjs URL CELLS.json [SCREENSHOT.png]
//
// CELLS.json is a list of code entries.  Each is typed into the console's
// input and run with the Enter key, as a person would; the driver waits until
// the console is ready again.  An entry may also be {"code": ..., "stopAfter":
// milliseconds}: then Ctrl+C is pressed that long after Enter.  Prints one JSON object: the output text after
// each entry, the final status and the browser console's messages.  The
// browser gets a fresh profile and the flags that stop Chromium from reaching
// Google's hosts on its own, since tests may only touch loopback.
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, cellsFile, screenshot] = process.argv.slice(2);
if (!url || !cellsFile) {
  console.error("usage: node console.mjs URL CELLS.json");
  process.exit(2);
}
const cells = JSON.parse(readFileSync(cellsFile, "utf8"));
const timeout = Number(process.env.NETSHIM_BROWSER_TIMEOUT ?? "120000");
const profile = mkdtempSync(join(tmpdir(), "netshim-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.NETSHIM_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1000, height: 700 },
});
const consoleMessages = [];
let exitStatus = 0;
const state = (page) => page.evaluate(() => document.getElementById("status").dataset.state);
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (message) => consoleMessages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleMessages.push(`pageerror: ${error.message}`));
  await page.goto(url);
  await page.waitForFunction(
    () => ["ready", "error"].includes(document.getElementById("status").dataset.state),
    null,
    { timeout },
  );
  const outputs = [];
  if ((await state(page)) === "ready") {
    for (const cell of cells) {
      const { code, stopAfter } = typeof cell === "string" ? { code: cell } : cell;
      await page.fill("#input", code);
      await page.press("#input", "Enter");
      if (stopAfter !== undefined) {
        await page.waitForTimeout(stopAfter);
        await page.keyboard.press("Control+c");
      }
      await page.waitForFunction(
        () => document.getElementById("status").dataset.state === "ready",
        null,
        { timeout },
      );
      outputs.push(await page.textContent("#output"));
    }
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    state: await state(page),
    status: await page.textContent("#status"),
    gateway: await page.textContent("#gateway"),
    greeting: outputs.length ? null : await page.textContent("#output"),
    outputs,
    console: consoleMessages,
  }));
} catch (error) {
  console.error(String(error.stack ?? error));
  console.error(consoleMessages.join("\n"));
  exitStatus = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitStatus);
