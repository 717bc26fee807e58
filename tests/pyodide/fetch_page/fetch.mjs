// The page's side: runs the script named by ?script= (boot.mjs) here, or with
// worker=1 in a dedicated Worker (worker.mjs), and leaves the script's `result`
// dict (or the error) in window.netshimResult.
import { runScript } from "./boot.mjs";

const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
try {
  if (params.get("worker") === "1") {
    status.textContent = "Running the script in a Worker…";
    const worker = new Worker(new URL("worker.mjs", import.meta.url), { type: "module" });
    const answer = await new Promise((resolve, reject) => {
      worker.onmessage = (event) => resolve(event.data.result);
      worker.onerror = (event) => reject(new Error(event.message ?? "the worker failed"));
      worker.postMessage(location.search);
    });
    worker.terminate();
    window.netshimResult = answer;
  } else {
    window.netshimResult = await runScript(params, (text) => { status.textContent = text; });
  }
  status.textContent = "Done.";
} catch (error) {
  status.textContent = `Failed: ${error.message ?? error}`;
  window.netshimResult = { error: String(error.message ?? error) };
}
