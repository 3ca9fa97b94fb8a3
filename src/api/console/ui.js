// Small DOM helpers shared by the screens: building elements (text is always set as text, never
// as HTML), the error and status regions, the confirmation dialog, and the session's scopes.

import { ApiFailure } from "./api.js";

// el("td", {class: "num"}, "12") — attributes starting with "on" are event listeners.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A table with a caption, header cells and rows of cells (a cell is a value or an element).
export function table(caption, headers, rows) {
  const cell = (c) => (c instanceof Node && (c.tagName === "TD" || c.tagName === "TH") ? c : el("td", {}, c));
  return el("table", {},
    el("caption", { class: "hint" }, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map(cell)))));
}

export function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
}

export function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

// The API's message stays on screen until the next action succeeds.
export function showError(e) {
  const box = document.getElementById("error");
  box.replaceChildren();
  if (e instanceof ApiFailure) {
    box.append(el("strong", {}, `${e.message}`), ` (${e.code}${e.status ? `, HTTP ${e.status}` : ""})`);
    if (e.details.length) {
      box.append(el("ul", {}, e.details.map((d) => el("li", {}, describe(d)))));
    }
  } else {
    box.append(el("strong", {}, String(e && e.message ? e.message : e)));
  }
  box.hidden = false;
  box.focus();
}

function describe(detail) {
  if (detail && detail.field) return `${detail.field}: ${detail.message} (${detail.code})`;
  return Object.entries(detail).map(([k, v]) => `${k}: ${v}`).join(", ");
}

export function clearError() {
  const box = document.getElementById("error");
  box.hidden = true;
  box.replaceChildren();
}

export function say(message) {
  document.getElementById("status").textContent = message;
}

// Run an action: its failure is shown, its success clears the last error.
export async function attempt(action) {
  try {
    const out = await action();
    clearError();
    return out;
  } catch (e) {
    showError(e);
    return undefined;
  }
}

// Ask before an action; resolves true when confirmed. `body` is a list of paragraphs.
export function confirmAction(title, body, confirmLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").replaceChildren(...body.map((p) => el("p", {}, p)));
  document.getElementById("confirm-ok").textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// The signed-in session (GET /v1/session): token name, scopes, platform, sources.
export const session = { scopes: [], sources: [] };

export function allows(scope) {
  return session.scopes.includes(scope);
}

// Hide what the token's scopes do not allow (elements marked data-scope).
export function applyScopes(root = document) {
  for (const node of root.querySelectorAll("[data-scope]")) {
    node.hidden = !allows(node.dataset.scope);
  }
}

// Fill a <select> with the platform's sources after its first ("any") option.
export function fillSources(select) {
  select.replaceChildren(select.options[0], ...session.sources.map((s) => el("option", { value: s }, s)));
}
