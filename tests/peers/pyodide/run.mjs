// Runs one Python script inside Pyodide under Node, with wheels installed first.
//
//   node run.mjs SCRIPT.py WHEEL...
//
// Pyodide comes from the pinned npm package, whose files are all local: no
// CDN is reached.  The wheels (netshim's own and its pure-Python
// dependencies) are unpacked into site-packages, which is what installing a
// pure-Python wheel amounts to.  Environment variables starting with
// NETSHIM_ are passed into Python's os.environ, so tests can hand the script
// ports and options.  The script's output is the process's; an uncaught
// Python exception prints its traceback and exits with status 1.
import { loadPyodide } from "pyodide";
import { readFileSync } from "node:fs";
import { basename } from "node:path";

// Node before 22 has no global WebSocket, which Pyodide code reaches as
// js.WebSocket: the ws package stands in, as it would in an application.
if (typeof globalThis.WebSocket === "undefined") {
  globalThis.WebSocket = (await import("ws")).WebSocket;
}

const [script, ...wheels] = process.argv.slice(2);
if (!script) {
  console.error("usage: node run.mjs SCRIPT.py WHEEL...");
  process.exit(2);
}
const env = { HOME: "/home/pyodide" };
for (const [key, value] of Object.entries(process.env)) {
  if (key.startsWith("NETSHIM_")) env[key] = value;
}
const pyodide = await loadPyodide({ env });
const names = [];
for (const wheel of wheels) {
  const name = basename(wheel);
  pyodide.FS.writeFile(`/tmp/${name}`, readFileSync(wheel));
  names.push(name);
}
const install = pyodide.runPython(`
def _install(names):
    import site, zipfile
    for name in names:
        with zipfile.ZipFile("/tmp/" + name) as wheel:
            wheel.extractall(site.getsitepackages()[0])
_install
`);
install(pyodide.toPy(names));
install.destroy();
pyodide.runPython("del _install");
try {
  await pyodide.runPythonAsync(readFileSync(script, "utf8"), { filename: script });
} catch (error) {
  console.error(error.message ?? String(error));
  process.exit(1);
}
process.exit(0);
