// Boots Pyodide from files served next to this page (no CDN), installs the wheels
// listed in wheels/index.json and runs app.py in the role the query string names:
//   ?role=server|client&gateway=ws://HOST:PORT/&lan=demo&token=TOKEN[&requests=N]
import { loadPyodide } from "./pyodide/pyodide.mjs";

const params = new URLSearchParams(location.search);
const role = params.get("role") ?? "server";
const gateway = params.get("gateway") ?? `ws://${location.hostname}:8765/`;
document.getElementById("role").textContent = role;
document.getElementById("gateway").textContent = gateway;
const status = document.getElementById("status");

function fail(error) {
  status.dataset.state = "error";
  status.textContent = `Failed: ${error.message ?? error}`;
  window.netshimResult = { error: String(error.message ?? error) };
}

try {
  const pyodide = await loadPyodide({
    indexURL: new URL("pyodide/", location.href).href,
    env: {
      HOME: "/home/pyodide",
      NETSHIM_ROLE: role,
      NETSHIM_WISP_URL: gateway,
      NETSHIM_LAN: params.get("lan") ?? "demo",
      NETSHIM_LAN_TOKEN: params.get("token") ?? "",
      NETSHIM_REQUESTS: params.get("requests") ?? "1",
    },
  });
  status.textContent = "Installing netshim, aiohttp and httpx…";
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
  status.textContent = "Joining the LAN…";
  const code = await (await fetch("app.py")).text();
  await pyodide.runPythonAsync(code, { filename: "app.py" });
} catch (error) {
  fail(error);
}
