// The api as the page calls it: same origin, with the API key (when the user gave one) as the
// bearer token. A 401 asks for a key once; every view waits for it and then reloads.
const KEY = "chatrl-api-key";

export class HttpError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
  }
}

const listeners = new Set();
/** `fn()` runs when the server refused the key (or wanted one): the page shows the key form. */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

export function apiKey() {
  return localStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

function headers() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function call(method, path) {
  const response = await fetch(path, { method, headers: headers() });
  if (response.status === 401) for (const fn of listeners) fn();
  const body = response.headers.get("content-type")?.includes("json")
    ? await response.json()
    : null;
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

export const get = (path) => call("GET", path);
export const post = (path) => call("POST", path);

/** Downloads `path` as a file named `name`, with the key (a plain link could not send it). */
export async function download(path, name) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) for (const fn of listeners) fn();
  if (!response.ok) throw new HttpError(response.status, null);
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params))
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
