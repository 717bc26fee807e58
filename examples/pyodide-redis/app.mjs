// Boots Pyodide from files served next to this page (no CDN), installs the
// wheels listed in wheels/index.json, and runs app.py.  The gateway and the
// Redis address come from the query string: ?gateway=ws://HOST:PORT/&redis=HOST:PORT
import { loadPyodide } from "./pyodide/pyodide.mjs";

const params = new URLSearchParams(location.search);
const gateway = params.get("gateway") ?? `ws://${location.hostname}:8765/`;
const redis = params.get("redis") ?? "127.0.0.1:6379";
document.getElementById("gateway").textContent = gateway;
document.getElementById("redis").textContent = redis;
const status = document.getElementById("status");

function fail(error) {
  status.dataset.state = "error";
  status.textContent = `Failed: ${error.message ?? error}`;
  window.netshimResult = { error: String(error.message ?? error) };
}

try {
  const [host, port] = [redis.slice(0, redis.lastIndexOf(":")), redis.slice(redis.lastIndexOf(":") + 1)];
  const pyodide = await loadPyodide({
    indexURL: new URL("pyodide/", location.href).href,
    env: { HOME: "/home/pyodide", NETSHIM_WISP_URL: gateway, NETSHIM_REDIS_HOST: host, NETSHIM_REDIS_PORT: port },
  });
  status.textContent = "Installing netshim and redis-py…";
  const names = await (await fetch("wheels/index.json")).json();
  for (const name of names) {
    const data = new Uint8Array(await (await fetch(`wheels/${name}`)).arrayBuffer());
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
  status.textContent = "Connecting to Redis through the gateway…";
  const code = await (await fetch("app.py")).text();
  await pyodide.runPythonAsync(code, { filename: "app.py" });
} catch (error) {
  fail(error);
}
