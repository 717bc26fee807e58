// A dedicated Worker that runs the script (boot.mjs) and posts back its result or
// error.  With jspi=0 in the query it hides WebAssembly stack switching from
// Pyodide first, so that blocking sockets take the path a browser without JSPI
// takes (FetchStack's synchronous XMLHttpRequest).
import { runScript } from "./boot.mjs";

self.onmessage = async (event) => {
  const params = new URLSearchParams(event.data);
  if (params.get("jspi") === "0") {
    delete WebAssembly.Suspending;
    delete WebAssembly.Suspender;
  }
  try {
    self.postMessage({ result: await runScript(params) });
  } catch (error) {
    self.postMessage({ result: { error: String(error.stack ?? error.message ?? error) } });
  }
};
