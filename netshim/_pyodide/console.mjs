// netshim pyodide serve's console: boots Pyodide from this server, installs the
// wheels it lists in config.json (netshim's own first), installs netshim on the
// gateway and runs what is typed.
//
// The gateway is config.via when the command was given --via, else the server
// itself: a WebSocket to this page's own host and port reaches the gateway that
// runs in the same process (same origin, so nothing else to configure).
// Each entry goes to netshim._pyodide_serve.run_cell through runPythonAsync,
// which prints a last value or a traceback; stdout and stderr land in #output.
// #status's data-state (loading, ready, busy, error) says where the console
// is, for people and for the test that drives it.  Stop (Ctrl+C, Esc) cancels
// the running entry's task through _netshim_console.interrupt().
import { loadPyodide } from "./pyodide/pyodide.mjs";

const output = document.getElementById("output");
const input = document.getElementById("input");
const form = document.getElementById("prompt");
const runButton = form.querySelector('button[type="submit"]');
const stopButton = document.getElementById("stop");
const status = document.getElementById("status");

function show(text, kind) {
  const span = document.createElement("span");
  span.className = kind;
  span.textContent = text;
  output.append(span);
  output.scrollTop = output.scrollHeight;
}

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
  const ready = state === "ready";
  input.disabled = !ready;
  runButton.disabled = !ready;
  stopButton.hidden = state !== "busy";
  if (ready) input.focus();
}

const history = [];
let historyAt = 0;
let pyodide;
let runner;

async function run(source) {
  if (!source.trim()) return;
  history.push(source);
  historyAt = history.length;
  show(source.split("\n").map((line, i) => (i ? "... " : ">>> ") + line).join("\n") + "\n", "input");
  setStatus("busy", "Running…");
  try {
    runner.set("_netshim_source", source);
    await pyodide.runPythonAsync("await _netshim_console.run_cell(_netshim_source)", {
      globals: runner,
      filename: "<netshim console>",
    });
  } catch (error) {
    // run_cell reports the code's own errors; this is the console's.
    show(`${error.message ?? error}\n`, "stderr");
  }
  setStatus("ready", "Ready");
}

// Cancels the entry's task: code that awaits stops with KeyboardInterrupt.
// (A blocking call under JSPI is inside one await and stops when it returns.)
function interrupt() {
  if (status.dataset.state === "busy") pyodide.runPython("_netshim_console.interrupt()", { globals: runner });
}
stopButton.addEventListener("click", interrupt);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || (event.key === "c" && event.ctrlKey && !getSelection().toString())) {
    interrupt();
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const source = input.value;
  input.value = "";
  input.rows = 1;
  run(source);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  } else if (event.key === "Enter") {
    input.rows = Math.min(input.rows + 1, 12);
  } else if ((event.key === "ArrowUp" || event.key === "ArrowDown") && !input.value.includes("\n")) {
    if (!history.length) return;
    event.preventDefault();
    historyAt = Math.max(0, Math.min(history.length, historyAt + (event.key === "ArrowUp" ? -1 : 1)));
    input.value = history[historyAt] ?? "";
  }
});

try {
  const config = await (await fetch("config.json")).json();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const via = config.via ?? `${scheme}//${location.host}/`;
  document.getElementById("gateway").textContent = via;
  pyodide = await loadPyodide({
    indexURL: new URL("pyodide/", location.href).href,
    env: { HOME: "/home/pyodide" },
  });
  pyodide.setStdout({ batched: (text) => show(text + "\n", "stdout") });
  pyodide.setStderr({ batched: (text) => show(text + "\n", "stderr") });
  setStatus("loading", "Installing netshim…");
  for (const name of config.wheels) {
    const response = await fetch(`wheels/${encodeURIComponent(name)}`);
    if (!response.ok) throw new Error(`wheels/${name}: HTTP ${response.status}`);
    pyodide.FS.writeFile(`/tmp/${name}`, new Uint8Array(await response.arrayBuffer()));
  }
  runner = pyodide.toPy({ _netshim_wheels: config.wheels, _netshim_via: via });
  // A pure-Python wheel is installed by unpacking it into site-packages.
  await pyodide.runPythonAsync(
    `
import site, zipfile
for _name in _netshim_wheels:
    with zipfile.ZipFile("/tmp/" + _name) as _wheel:
        _wheel.extractall(site.getsitepackages()[0])
import netshim._pyodide_serve as _netshim_console
await _netshim_console.start_console(_netshim_via)
`,
    { globals: runner, filename: "<netshim console setup>" },
  );
  setStatus("ready", "Ready");
  window.netshimConsole = { run };
} catch (error) {
  setStatus("error", `Failed: ${error.message ?? error}`);
  show(`${error.message ?? error}\n`, "stderr");
}
