// Profiles: find one by name or identifier; its golden record with each value's provenance,
// its records, timeline, consents and explanation; merge and unmerge after a confirmation.

import { get, post, query } from "./api.js";
import { allows, attempt, confirmAction, el, percent, say, table, when } from "./ui.js";

const $ = (id) => document.getElementById(id);
let shown = null; // the profile on screen

export async function start() {
  $("search-name").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const params = Object.fromEntries(["familyName", "givenName", "postcode"].map((k) => [k, form.get(k).trim()]));
    attempt(() => search(`/v1/profiles/search${query(params)}`));
  });
  $("search-identifier").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    attempt(() => lookup(form.get("kind"), form.get("value").trim()));
  });
}

export async function refresh() {
  if (shown) await open(shown.id);
}

async function lookup(kind, value) {
  if (kind === "id") return open(value);
  if (kind === "record") {
    const at = value.indexOf(":");
    return search(`/v1/profiles/lookup${query({ source: value.slice(0, at), sourceRecordId: value.slice(at + 1) })}`);
  }
  return search(`/v1/profiles/lookup${query({ [kind]: value })}`);
}

function nameOf(profile) {
  const a = (profile.golden && profile.golden.attributes) || {};
  const part = (k) => (a[k] ? a[k].display || a[k].value : "");
  return [part("givenName"), part("familyName")].filter(Boolean).join(" ") || part("fullName") || "(no name)";
}

async function search(path) {
  const list = await get(path);
  const box = $("profile-results");
  $("profile-detail").replaceChildren();
  shown = null;
  if (!list.profiles.length) {
    box.replaceChildren(el("p", {}, "No profile found."));
    return;
  }
  box.replaceChildren(
    el("h2", {}, `${list.profiles.length} profile(s) found`),
    el("ul", { class: "results" }, list.profiles.map((p) =>
      el("li", {}, el("button", { type: "button", class: "link-button", onclick: () => attempt(() => open(p.id)) },
        `${p.id} · ${nameOf(p)} · ${p.recordCount} record(s)`)))));
  if (list.nextAfter) box.append(el("p", { class: "hint" }, "More profiles match: narrow the search."));
}

async function open(id) {
  const profile = await get(`/v1/profiles/${encodeURIComponent(id)}`);
  const [timeline, consents, explanation] = await Promise.all([
    get(`/v1/profiles/${profile.id}/timeline`),
    get(`/v1/profiles/${profile.id}/consents`),
    get(`/v1/profiles/${profile.id}/explanation`),
  ]);
  shown = profile;
  const detail = $("profile-detail");
  detail.replaceChildren(
    el("h2", { id: "profile-heading", tabindex: "-1" }, `Profile ${profile.id}: ${nameOf(profile)}`),
    el("p", {}, `${profile.recordCount} record(s) · version ${profile.version} · updated ${when(profile.updatedAtMs)}` +
      (profile.aliases.length ? ` · merged ids: ${profile.aliases.join(", ")}` : "")),
    golden(profile),
    records(profile, timeline.records),
    consentTable(consents),
    explain(explanation),
    events(timeline.events),
    allows("write") ? mergeForm(profile) : null,
  );
  $("profile-heading").focus();
}

function golden(profile) {
  const attributes = (profile.golden && profile.golden.attributes) || {};
  const rows = Object.entries(attributes).map(([name, v]) => [
    el("th", { scope: "row" }, name), v.display || v.value, v.source, v.sourceRecordId, v.rule, when(v.observedAtMs),
  ]);
  return el("div", {}, el("h3", {}, "Golden record"),
    table("Each value with its provenance: the source and record it came from and the survivorship rule that chose it",
      ["Attribute", "Value", "Source", "Record", "Rule", "Observed"], rows));
}

function records(profile, list) {
  const write = allows("write");
  const rows = list.map((r) => [
    write ? el("td", {}, el("input", { type: "checkbox", class: "split", value: r.id, "aria-label": `Split out record ${r.id}` })) : null,
    r.id, r.source, r.sourceRecordId, when(r.observedAtMs),
    Object.entries(r.attributes).map(([k, v]) => `${k}=${v}`).join(", "),
  ].filter((c) => c !== null));
  const headers = [write ? "Split out" : null, "Record", "Source", "Source record id", "Observed", "Attributes"].filter(Boolean);
  const box = el("div", {}, el("h3", {}, "Records"), table("The source records this profile holds", headers, rows));
  if (write) {
    box.append(el("button", { type: "button", class: "secondary", id: "unmerge", onclick: () => attempt(() => unmerge(profile)) },
      "Unmerge the selected records…"));
  }
  return box;
}

function consentTable(consents) {
  const rows = Object.entries(consents.current || {}).map(([purpose, s]) => [
    el("th", { scope: "row" }, purpose), s.state, s.source, s.sourceRecordId, when(s.observedAtMs),
  ]);
  return el("div", {}, el("h3", {}, "Consents"),
    rows.length
      ? table("Current state per purpose: the newest statement", ["Purpose", "State", "Source", "Record", "Stated"], rows)
      : el("p", {}, "No consent stated."));
}

function explain(explanation) {
  const rows = explanation.links.map((l) => {
    const e = l.evidence || {};
    return [l.recordId, `${l.source} ${l.sourceRecordId}`, e.decision || "", summary(e)];
  });
  return el("div", {}, el("h3", {}, "Explanation"),
    table("Why each record is in this profile", ["Record", "Source record", "Decision", "Evidence"], rows));
}

// One line per link: what decided it and the strongest evidence behind it.
function summary(e) {
  switch (e.decision) {
    case "linked": {
      const link = (e.links || [])[0];
      if (!link) return "";
      const pair = link.pair || {};
      const compared = (pair.comparisons || []).map((c) => `${c.name} ${c.level} (${c.weight.toFixed(1)})`).join("; ");
      return `${pair.rule ? `rule ${pair.rule}; ` : ""}probability ${percent(pair.probability ?? link.probability ?? 0)}; ${compared}`;
    }
    case "new":
      return `started the profile; ${(e.candidates || []).length} candidate(s) fell short`;
    case "review":
      return `review item ${e.reviewId} approved by ${e.approvedBy} at ${when(e.approvedAtMs)}`;
    case "manual":
      return `by hand${e.by ? ` (${e.by})` : ""}`;
    default:
      return JSON.stringify(e);
  }
}

function events(list) {
  const rows = list.slice().reverse().map((e) => [when(e.createdAtMs), e.type, e.profileId || "", e.recordId ?? ""]);
  return el("div", {}, el("h3", {}, "Timeline"),
    table("What happened to this profile, newest first", ["When", "Event", "Profile", "Record"], rows));
}

function mergeForm(profile) {
  const form = el("form", { class: "filters", id: "merge-form" },
    el("h3", {}, "Merge with another profile"),
    el("div", {}, el("label", { for: "merge-other" }, "Other profile id"), el("input", { id: "merge-other", name: "other", required: true, placeholder: "p34" })),
    el("button", { type: "submit" }, "Merge…"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => merge(profile, form.elements.other.value.trim()));
  });
  return form;
}

async function merge(profile, otherId) {
  const other = await get(`/v1/profiles/${encodeURIComponent(otherId)}`);
  const older = Number(profile.id.slice(1)) < Number(other.id.slice(1)) ? profile.id : other.id;
  const ok = await confirmAction(`Merge ${profile.id} and ${other.id}?`, [
    `${profile.id} (${nameOf(profile)}, ${profile.recordCount} record(s)) and ${other.id} (${nameOf(other)}, ` +
      `${other.recordCount} record(s)) become one profile: ${older}, the older one, keeps all ${profile.recordCount + other.recordCount} records.`,
    `The other id keeps resolving to ${older}; the golden record is computed again, and the feeds receive a profile.merged event.`,
    "An unmerge can split the records apart again.",
  ], "Merge");
  if (!ok) return;
  const result = await post(`/v1/profiles/${profile.id}/merge`, { other: other.id });
  say(`Merged: ${profile.id} and ${other.id} are now ${result.survivor}.`);
  await open(result.survivor);
}

async function unmerge(profile) {
  const ids = [...document.querySelectorAll("#profile-detail input.split:checked")].map((c) => Number(c.value));
  if (!ids.length) throw new Error("Select the records to split out of this profile first.");
  const ok = await confirmAction(`Unmerge ${ids.length} record(s) from ${profile.id}?`, [
    `Records ${ids.join(", ")} leave ${profile.id} and are clustered again into new profile(s); the records left ` +
      `are clustered again too, and the cluster holding the oldest record keeps the id ${profile.id}.`,
    "The matcher will not merge what you separate back together (never-merge pairs), and the feeds receive a profile.unmerged event.",
  ], "Unmerge");
  if (!ok) return;
  const result = await post(`/v1/profiles/${profile.id}/unmerge`, { records: ids });
  say(`Unmerged from ${result.profile}: new profile(s) ${result.created.join(", ")}.`);
  await open(result.profile);
}
