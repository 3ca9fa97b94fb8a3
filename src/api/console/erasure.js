// Erasure (the `erase` scope): remove a person by profile id or identifier, with a reason
// code kept in the audit, and the audit itself.

import { get, post, query } from "./api.js";
import { attempt, confirmAction, el, say, table, when } from "./ui.js";

const $ = (id) => document.getElementById(id);

export async function start() {
  const form = $("erasure-form");
  for (const radio of form.elements.by) radio.addEventListener("change", () => showFields(form));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => erase(form));
  });
  await audit();
}

export async function refresh() {
  await audit();
}

// The fields of the chosen way to name the person.
function showFields(form) {
  const byProfile = form.elements.by.value === "profile";
  $("erase-by-profile").hidden = !byProfile;
  $("erase-by-identifier").hidden = byProfile;
}

function request(form) {
  const f = form.elements;
  const reason = f.reason.value.trim();
  if (f.by.value === "profile") return { profileId: f.profileId.value.trim(), reason };
  const attribute = f.attribute.value === "identifiers." ? `identifiers.${f.identifierName.value.trim()}` : f.attribute.value;
  return { attribute, value: f.value.value.trim(), reason };
}

async function erase(form) {
  const body = request(form);
  const whom = body.profileId ? `profile ${body.profileId}` : `every profile holding this ${body.attribute}`;
  const ok = await confirmAction(`Erase ${whom}?`, [
    `Every record, golden value, consent and event of ${whom} is removed from the store and its files; this cannot be undone.`,
    "The person's identifiers are refused at intake from now on, the feeds receive profile.erased, " +
      `and the audit keeps keyed hashes only, with the reason "${body.reason}".`,
  ], "Erase");
  if (!ok) return;
  const result = await post("/v1/erasures", body);
  say(`Erasure ${result.erasureId} done: ${result.profiles.length ? result.profiles.join(", ") : "no profile"} erased.`);
  $("erasure-result").replaceChildren(el("div", { class: "card" },
    el("h2", {}, `Erasure ${result.erasureId}`),
    result.notice ? el("p", { class: "error" }, result.notice) : null,
    el("p", {}, `Profiles erased: ${result.profiles.join(", ") || "none"}`),
    el("p", {}, `Removed: ${removed(result.removed)}`),
    el("p", {}, `Identifiers now refused at intake: ${result.suppressed.map((s) => s.attribute).join(", ") || "none"}`),
    el("p", {}, result.scrubbed ? "The store's files hold no copy any more." : "The files are scrubbed at the next erasure.")));
  form.reset();
  showFields(form);
  await audit();
}

function removed(r) {
  const words = (key) => key.replace(/[A-Z]/g, (c) => ` ${c.toLowerCase()}`);
  return Object.entries(r || {}).filter(([, n]) => n).map(([k, n]) => `${n} ${words(k)}`).join(", ") || "nothing";
}

async function audit(after = 0) {
  const page = await get(`/v1/erasures${query({ after, limit: 100 })}`);
  const rows = page.erasures.map((e) => [
    e.id, when(e.erasedAtMs), e.profileIds.join(", ") || "none", e.reason, e.requestedBy, removed(e.removed),
  ]);
  $("erasure-audit").replaceChildren(rows.length
    ? table("Every erasure, oldest first (identifiers kept as keyed hashes only)",
      ["Erasure", "When", "Profiles", "Reason", "Requested by", "Removed"], rows)
    : el("p", {}, "No erasure yet."));
  if (page.nextAfter) {
    $("erasure-audit").append(el("button", { type: "button", class: "secondary", onclick: () => attempt(() => audit(page.nextAfter)) }, "Later entries"));
  }
}
