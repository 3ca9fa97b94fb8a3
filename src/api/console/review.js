// Review queue: one pair at a time, both records side by side with the matcher's evidence;
// approve (one person), reject (two people) or skip, with the keyboard or the buttons.

import { get, post, query } from "./api.js";
import { allows, attempt, el, fillSources, percent, say, table, when } from "./ui.js";

const PAGE = 25;
const state = { items: [], index: 0, pageStart: 0, nextAfter: null, filters: {} };
const $ = (id) => document.getElementById(id);

export async function start() {
  fillSources($("review-source"));
  $("review-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => load(0));
  });
  $("review-approve").addEventListener("click", () => attempt(() => decide("approve")));
  $("review-reject").addEventListener("click", () => attempt(() => decide("reject")));
  $("review-skip").addEventListener("click", () => attempt(skip));
  document.addEventListener("keydown", onKey);
  await load(0);
}

export async function refresh() {
  await load(state.pageStart);
}

function onKey(event) {
  if ($("screen-review").hidden || $("confirm").open) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, select, textarea")) return;
  const action = { a: "approve", r: "reject", s: "skip" }[event.key.toLowerCase()];
  if (!action) return;
  event.preventDefault();
  if (action === "skip") attempt(skip);
  else if (allows("write")) attempt(() => decide(action));
}

function filterParams() {
  const form = new FormData($("review-filters"));
  const [min, max] = (form.get("band") || "-").split("-");
  return {
    filter: form.get("status"),
    source: form.get("source"),
    reason: form.get("reason"),
    minProbability: min,
    maxProbability: max,
  };
}

// Load the page starting after `after`, keeping the position at the first item past `afterId`.
async function load(after, afterId = null) {
  state.filters = filterParams();
  const page = await get(`/v1/review${query({ ...state.filters, after, limit: PAGE })}`);
  state.items = page.items;
  state.pageStart = after;
  state.nextAfter = page.nextAfter;
  const next = afterId === null ? 0 : state.items.findIndex((i) => i.id > afterId);
  state.index = next < 0 ? state.items.length : next;
  if (state.index >= state.items.length && state.nextAfter !== null && state.nextAfter !== undefined) {
    return load(state.nextAfter);
  }
  renderCounts(page.counts);
  render();
  renderPages();
}

function renderPages() {
  const pages = $("review-pages");
  pages.replaceChildren();
  if (state.pageStart) {
    pages.append(el("button", { type: "button", class: "secondary", onclick: () => attempt(() => load(0)) }, "First page"));
  }
  if (state.nextAfter !== null && state.nextAfter !== undefined) {
    pages.append(el("button", { type: "button", class: "secondary", onclick: () => attempt(() => load(state.nextAfter)) }, "Next page"));
  }
}

function renderCounts(counts) {
  const decided = counts.approved + counts.rejected + counts.superseded;
  $("review-counts").textContent =
    `${counts.open} open · ${decided} decided (${counts.approved} approved, ${counts.rejected} rejected, ` +
    `${counts.superseded} superseded by a merge)`;
}

function current() {
  return state.items[state.index];
}

async function decide(kind) {
  const item = current();
  if (!item) return;
  const answer = await post(`/v1/review/${item.id}/${kind}`);
  say(kind === "approve"
    ? `Item ${item.id} approved: the records are one profile, ${answer.survivor}.`
    : `Item ${item.id} rejected: these records will not be merged.`);
  await load(state.pageStart, item.id);
  $("review-item").focus();
}

async function skip() {
  const item = current();
  if (!item) return;
  state.index += 1;
  if (state.index >= state.items.length && state.nextAfter !== null && state.nextAfter !== undefined) {
    await load(state.nextAfter);
  } else {
    render();
  }
  say(`Item ${item.id} skipped.`);
  $("review-item").focus();
}

function render() {
  const box = $("review-item");
  const item = current();
  const open = item && item.status === "open";
  for (const id of ["review-approve", "review-reject"]) $(id).disabled = !open;
  $("review-skip").disabled = !item;
  if (!item) {
    box.replaceChildren(el("p", {}, "No item left here under these filters."));
    return;
  }
  box.replaceChildren(
    el("h2", {}, `Item ${item.id} (${state.index + 1} of ${state.items.length} on this page)`),
    el("div", { class: "meta" },
      el("p", {}, "Match probability ", el("span", { class: "probability" }, percent(item.probability))),
      el("p", {}, `Reason: ${item.reason}`),
      el("p", {}, `Status: ${item.status}${item.decidedBy ? ` by ${item.decidedBy}` : ""}`),
      el("p", {}, `Queued ${when(item.createdAtMs)}`)),
    sideBySide(item),
    evidence(item.evidence),
  );
}

function recordTitle(record, profile) {
  if (!record) return "(record erased)";
  return `${record.source} ${record.sourceRecordId} · ${profile}`;
}

function sideBySide(item) {
  const a = (item.record && item.record.attributes) || {};
  const b = (item.otherRecord && item.otherRecord.attributes) || {};
  const names = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  const rows = names.map((name) => {
    const agree = a[name] !== undefined && b[name] !== undefined
      ? (String(a[name]).toLowerCase() === String(b[name]).toLowerCase() ? "same" : "differs")
      : "one side only";
    return [el("th", { scope: "row" }, name), a[name] ?? "", b[name] ?? "",
      el("td", { class: agree === "same" ? "same" : agree === "differs" ? "differs" : "" }, agree)];
  });
  return table("The two records, attribute by attribute, as their sources sent them",
    ["Attribute", recordTitle(item.record, item.profile), recordTitle(item.otherRecord, item.otherProfile), "Compared"],
    rows);
}

function evidence(pair) {
  if (!pair || !pair.comparisons) return el("p", {}, "No evidence recorded.");
  const rows = pair.comparisons.map((c) => [
    c.name, c.attribute,
    `${c.level}${c.swapped ? " (swapped)" : ""}${c.implied ? " (implied)" : ""}`,
    el("td", { class: "num" }, c.weight.toFixed(2)),
  ]);
  rows.push(["prior", "", "", el("td", { class: "num" }, pair.priorWeight.toFixed(2))]);
  rows.push([el("th", { scope: "row" }, "match weight"), "", "", el("td", { class: "num" }, pair.matchWeight.toFixed(2))]);
  return el("div", {},
    el("h3", {}, "Evidence"),
    pair.rule ? el("p", {}, `Deterministic rule matched: ${pair.rule}`) : null,
    pair.forbiddenBy ? el("p", {}, `Never-merge constraint: ${pair.forbiddenBy} differs`) : null,
    table(`Each comparison's level and weight in bits; pair probability ${percent(pair.probability)}`,
      ["Comparison", "Attribute", "Level", "Weight (bits)"], rows));
}
