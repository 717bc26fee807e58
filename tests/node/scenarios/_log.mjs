// The event log a side-by-side scenario prints: the Node half of
// tests/node/test_node_side_by_side.py, whose Log class is the Python half.
//
// An entry is [actor, event, ...details]; details are the same on both sides:
// "data" the text, "error" [code, syscall] (null where Node has none),
// "close" hadError when the event carries it, "message" [text, family, size].

const entries = [];

export function record(actor, event, ...details) {
  entries.push([actor, event, ...details]);
}

export function errorOf(error) {
  if (error === null || error === undefined) return null;
  return [error.code ?? null, error.syscall ?? null];
}

function describe(event, args) {
  switch (event) {
    case 'data':
      return [String(args[0])];
    case 'error':
      return [errorOf(args[0])];
    case 'close':
      return typeof args[0] === 'boolean' ? [args[0]] : [];
    case 'message':
      return [String(args[0]), args[1].family, args[1].size];
    default:
      return [];
  }
}

export function watch(emitter, actor, events) {
  for (const event of events) {
    emitter.on(event, (...args) => record(actor, event, ...describe(event, args)));
  }
}

// The result of a call that throws (or not): [error code, syscall] or null.
export function attempt(actor, name, call) {
  try {
    call();
    record(actor, name, null);
  } catch (error) {
    record(actor, name, errorOf(error));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const once = (emitter, event) => new Promise((resolve) => emitter.once(event, resolve));

export function listen(server, port, host) {
  return new Promise((resolve) => server.listen(port, host, () => resolve(server.address().port)));
}

export function bind(socket, port, host) {
  return new Promise((resolve) => socket.bind(port, host, () => resolve(socket.address().port)));
}

export function finish() {
  process.stdout.write(JSON.stringify(entries));
  process.exit(0);
}

// A scenario that hangs still prints what it saw.
setTimeout(() => {
  record('harness', 'timed out');
  finish();
}, 8000).unref();
