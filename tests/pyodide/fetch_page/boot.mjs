// Boots Pyodide from this origin (page or worker), installs the wheels listed in
// ../wheels/index.json, runs the script named by ?script= with the NETSHIM_*
// query parameters in os.environ, and returns the script's `result` dict.
import { loadPyodide } from "../pyodide/pyodide.mjs";

export async function runScript(params, onStatus = () => {}) {
  const env = { HOME: "/home/pyodide" };
  for (const [key, value] of params) {
    if (key.startsWith("NETSHIM_")) env[key] = value;
  }
  const pyodide = await loadPyodide({ indexURL: new URL("../pyodide/", import.meta.url).href, env });
  const names = await (await fetch(new URL("../wheels/index.json", import.meta.url))).json();
  for (const name of names) {
    const wheel = await fetch(new URL(`../wheels/${name}`, import.meta.url));
    pyodide.FS.writeFile(`/tmp/${name}`, new Uint8Array(await wheel.arrayBuffer()));
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
  onStatus("Running the script…");
  const script = params.get("script") ?? "fetch_clients.py";
  const code = await (await fetch(new URL(`../scripts/${script}`, import.meta.url))).text();
  await pyodide.runPythonAsync(code, { filename: script });
  return JSON.parse(pyodide.runPython("import json; json.dumps(result)"));
}
