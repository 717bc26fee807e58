// `netshim pyodide run`'s runner: one Python script inside Pyodide under Node.
//
//   node run.mjs JOB.json
//
// JOB.json (written by netshim/_pyodide_cli.py) names the npm pyodide package
// directory, the wheels to install (netshim's own and pure-Python
// dependencies), the script's path, source and argv, and the --via URL.
// Pyodide's files are all local: no CDN is reached.  The wheels are unpacked
// into site-packages, which is what installing a pure-Python wheel amounts
// to; then netshim._pyodide_cli.run_in_pyodide runs the script.  Its output
// goes to this process's stdout and stderr byte for byte; the exit status is
// the script's (1 for an uncaught exception).
import { readFileSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));

// Node before 22 has no global WebSocket, which Pyodide code reaches as
// js.WebSocket: the ws package (a dependency of npm pyodide) stands in.
if (typeof globalThis.WebSocket === "undefined") {
  try {
    const require = createRequire(join(job.pyodide, "package.json"));
    globalThis.WebSocket = require("ws").WebSocket;
  } catch {
    // Without it a WebSocket tunnel fails inside Python, saying so.
  }
}

function writer(fd) {
  return {
    write(buffer) {
      let offset = 0;
      while (offset < buffer.length) {
        try {
          offset += writeSync(fd, buffer, offset, buffer.length - offset);
        } catch (error) {
          if (error.code !== "EAGAIN") throw error;
        }
      }
      return buffer.length;
    },
  };
}

const { loadPyodide } = await import(pathToFileURL(join(job.pyodide, "pyodide.mjs")).href);
const pyodide = await loadPyodide({
  indexURL: job.pyodide + "/",
  env: { ...process.env, HOME: "/home/pyodide" },
});
pyodide.setStdout(writer(1));
pyodide.setStderr(writer(2));

const names = [];
for (const wheel of job.wheels) {
  const name = basename(wheel);
  pyodide.FS.writeFile(`/tmp/${name}`, readFileSync(wheel));
  names.push(name);
}
const globals = pyodide.toPy({ _netshim_wheels: names, _netshim_job: job });
let status;
try {
  status = await pyodide.runPythonAsync(
    `
import site, zipfile
for _name in _netshim_wheels:
    with zipfile.ZipFile("/tmp/" + _name) as _wheel:
        _wheel.extractall(site.getsitepackages()[0])
import netshim._pyodide_cli
await netshim._pyodide_cli.run_in_pyodide(_netshim_job)
`,
    { globals, filename: "<netshim pyodide run>" },
  );
} catch (error) {
  process.stderr.write(`netshim pyodide run: ${error.message ?? String(error)}\n`);
  process.exit(1);
}
process.exit(typeof status === "number" ? status : 1);
