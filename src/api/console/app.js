// Sign-in, the session's scopes, and switching between screens (#review, #profiles, ...).

import * as api from "./api.js";
import { allows, applyScopes, attempt, clearError, say, session, showError } from "./ui.js";
import * as review from "./review.js";
import * as profiles from "./profiles.js";
import * as quarantine from "./quarantine.js";
import * as erasure from "./erasure.js";

const screens = { review, profiles, quarantine, erasure };
const needs = { erasure: "erase" };
let started = new Set();

async function signIn(tokenValue) {
  api.remember(tokenValue);
  try {
    Object.assign(session, await api.get("/v1/session"));
  } catch (e) {
    api.forget();
    showError(e);
    return;
  }
  clearError();
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-text").textContent =
    `${session.platform} · token ${session.token} (${session.scopes.join(", ")})`;
  applyScopes();
  show(location.hash.slice(1) || "review");
}

function signOut() {
  api.forget();
  location.hash = "";
  location.reload();
}

async function show(name) {
  if (!screens[name] || (needs[name] && !allows(needs[name]))) name = "review";
  for (const section of document.querySelectorAll(".screen")) section.hidden = section.id !== `screen-${name}`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.screen === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearError();
  say("");
  document.title = `${document.querySelector(`#screen-${name} h1`).textContent} · cdp console`;
  if (!started.has(name)) {
    started.add(name);
    await attempt(() => screens[name].start());
  } else {
    await attempt(() => screens[name].refresh());
  }
}

document.getElementById("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(document.getElementById("token").value.trim());
});
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", () => {
  if (api.token() && document.getElementById("sign-in").hidden) show(location.hash.slice(1));
});

if (api.token()) signIn(api.token());
else document.getElementById("token").focus();
