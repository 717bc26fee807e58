// Boots Pyodide from this origin, installs the wheels, runs the script named by
// ?script= with the NETSHIM_* query parameters in os.environ, and leaves the
// script's `result` dict (or the error) in window.netshimResult.
import { loadPyodide } from "../pyodide/pyodide.mjs";

const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
const env = { HOME: "/home/pyodide" };
for (const [key, value] of params) {
  if (key.startsWith("NETSHIM_")) env[key] = value;
}
try {
  const pyodide = await loadPyodide({ indexURL: new URL("../pyodide/", location.href).href, env });
  const names = await (await fetch("../wheels/index.json")).json();
  for (const name of names) {
    const data = new Uint8Array(await (await fetch(`../wheels/${name}`)).arrayBuffer());
    pyodide.FS.writeFile(`/tmp/${name}`, data);
  }
  // Installing a pure-Python wheel is unpacking it into site-packages.
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
  status.textContent = "Running the script…";
  const script = params.get("script") ?? "fetch_clients.py";
  const code = await (await fetch(`../scripts/${script}`)).text();
  await pyodide.runPythonAsync(code, { filename: script });
  window.netshimResult = JSON.parse(pyodide.runPython("import json; json.dumps(result)"));
  status.textContent = "Done.";
} catch (error) {
  status.textContent = `Failed: ${error.message ?? error}`;
  window.netshimResult = { error: String(error.message ?? error) };
}
