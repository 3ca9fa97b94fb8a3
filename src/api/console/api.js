// The REST API, called with the signed-in token. The token lives in sessionStorage only: it is
// gone when the tab closes, and nothing else about the session is kept in the browser.

const TOKEN_KEY = "cdp-console-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function remember(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// An answer in the API's error envelope: {"error": {"code", "message", "details"}}.
export class ApiFailure extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

// Call `path` (with `/v1/...`); the parsed JSON answer, null for 204, or an ApiFailure.
export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiFailure(0, "unreachable", `the API did not answer: ${e.message}`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: reported below with the status
  }
  if (!response.ok) {
    const error = json && json.error;
    if (error) throw new ApiFailure(response.status, error.code, error.message, error.details);
    throw new ApiFailure(response.status, "http_" + response.status, text || response.statusText);
  }
  return json;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const del = (path) => call("DELETE", path);

// A query string from the given, non-empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
