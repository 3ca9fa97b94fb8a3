// Quarantine: records refused at intake with each field's error; replay (validated again
// against the Source as it is now) or delete for good.

import { del, get, post, query } from "./api.js";
import { allows, attempt, confirmAction, el, fillSources, say, table, when } from "./ui.js";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
let after = 0;

export async function start() {
  fillSources($("quarantine-source"));
  $("quarantine-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => load(0));
  });
  await load(0);
}

export async function refresh() {
  await load(after);
}

async function load(from) {
  after = from;
  const source = new FormData($("quarantine-filters")).get("source");
  const page = await get(`/v1/quarantine${query({ filter: source, after: from, limit: PAGE })}`);
  const box = $("quarantine-list");
  if (!page.entries.length) {
    box.replaceChildren(el("p", {}, from ? "No more entries." : "Nothing in quarantine."));
  } else {
    box.replaceChildren(...page.entries.map(entry));
  }
  const nav = el("div", { class: "actions" });
  if (from) nav.append(el("button", { type: "button", class: "secondary", onclick: () => attempt(() => load(0)) }, "First page"));
  if (page.nextAfter) nav.append(el("button", { type: "button", class: "secondary", onclick: () => attempt(() => load(page.nextAfter)) }, "Next page"));
  box.append(nav);
}

function entry(e) {
  const origin = e.origin ? ` · Kafka ${e.origin.topic}/${e.origin.partition}@${e.origin.offset}` : "";
  const card = el("article", { class: "card", "aria-labelledby": `q-${e.id}` },
    el("h2", { id: `q-${e.id}` }, `Entry ${e.id} from ${e.source}`),
    el("p", { class: "hint" }, `Received ${when(e.receivedAtMs)}${origin}`),
    table("Why it was refused", ["Field", "Error", "Message"], e.errors.map((f) => [f.field, f.code, f.message])),
    el("details", {}, el("summary", {}, "Payload as sent"), el("pre", {}, JSON.stringify(e.payload, null, 2))));
  if (allows("write")) {
    card.append(el("div", { class: "actions" },
      el("button", { type: "button", onclick: () => attempt(() => replay(e)) }, `Replay entry ${e.id}`),
      el("button", { type: "button", class: "danger", onclick: () => attempt(() => remove(e)) }, `Delete entry ${e.id}…`)));
  }
  return card;
}

async function replay(e) {
  const result = await post(`/v1/quarantine/${e.id}/replay`);
  say(result.duplicates
    ? `Entry ${e.id} replayed: it had already been received (duplicate).`
    : `Entry ${e.id} replayed: queued for matching (intake id ${result.intakeIds.join(", ")}).`);
  await load(after);
}

async function remove(e) {
  const ok = await confirmAction(`Delete entry ${e.id}?`, [
    `The payload ${e.source} sent is deleted for good; nothing of it reaches a profile. The Source can still send a corrected record.`,
  ], "Delete");
  if (!ok) return;
  await del(`/v1/quarantine/${e.id}`);
  say(`Entry ${e.id} deleted.`);
  await load(after);
}
