// Remora control's dashboard: the nodes (status, serving version, healing ladder, rollout, figures),
// the event map and the live journal, from the same API the CLI uses. Every value is written with
// textContent, never as HTML.
"use strict";

const TOKEN_KEY = "remora-token";
const JOURNAL_KEPT = 200;
let token = null;
let lastSeq = 0;
let refreshTimer = null;
let refreshInterval = null;
let following = false;

function $(selector) {
  return document.querySelector(selector);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function setState(text, kind) {
  const state = $("#state");
  state.textContent = text;
  state.className = "state " + (kind || "");
}

// A token in the URL's fragment (`#token=…`) is taken and removed from the address bar.
function takeToken() {
  const match = /(?:^|&)token=([^&]*)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorized extends Error {}

async function api(path, options) {
  const init = Object.assign({}, options || {});
  init.headers = Object.assign({ Authorization: "Bearer " + token }, init.headers || {});
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((body && body.error) || response.status + " " + response.statusText);
  }
  return body;
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  $("#main").hidden = true;
  $("#token-form").hidden = false;
  setState(message || "a token is needed", "down");
}

function percent(share) {
  return share === null || share === undefined ? "–" : (share * 100).toFixed(1) + "%";
}

function ms(value) {
  return value === null || value === undefined ? "–" : value.toFixed(value < 10 ? 1 : 0) + " ms";
}

function healingText(node) {
  const healing = node.healing;
  if (!healing) return "healthy";
  let text = healing.phase;
  if (healing.phase === "healthy" && healing.breaches > 0) text += " (" + healing.breaches + " breached)";
  if (healing.reason) text += ": " + healing.reason;
  return text;
}

function rolloutCell(node) {
  const cell = element("td", null, "rollout");
  const rollout = node.rollout;
  if (!rollout) {
    cell.textContent = "–";
    return cell;
  }
  const bar = element("span", null, "bar");
  const fill = element("span");
  fill.style.width = Math.min(100, rollout.weight) + "%";
  bar.appendChild(fill);
  cell.appendChild(element("span", rollout.phase + " " + rollout.canary.version + " at " + rollout.weight + "% ", "phase"));
  cell.appendChild(bar);
  const steps = " step " + (rollout.step + 1) + "/" + rollout.steps.length +
    ", " + rollout.failed_checks + "/" + rollout.max_failed_checks + " failed checks" +
    (rollout.acked ? "" : ", not yet applied by every proxy");
  cell.appendChild(element("div", steps, "muted"));
  if (rollout.reason) cell.appendChild(element("div", rollout.reason, "muted"));
  return cell;
}

async function act(path, what) {
  $("#action-error").textContent = "";
  try {
    await api(path, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
  } catch (error) {
    $("#action-error").textContent = what + ": " + error.message;
  }
  refresh();
}

function actions(node) {
  const cell = element("td", null, "actions");
  const rollout = node.rollout;
  const name = encodeURIComponent(node.name);
  const button = (label, path) => {
    const b = element("button", label);
    b.type = "button";
    b.dataset.action = label;
    b.addEventListener("click", () => act(path, label + " " + node.name));
    cell.appendChild(b);
  };
  if (rollout && (rollout.phase === "progressing" || rollout.phase === "paused")) {
    button(rollout.phase === "paused" ? "resume" : "pause",
      "/v1/rollouts/" + name + "/" + (rollout.phase === "paused" ? "resume" : "pause"));
    button("promote", "/v1/rollouts/" + name + "/promote");
    button("abort", "/v1/rollouts/" + name + "/abort");
  }
  if (node.healing && node.healing.phase === "held") button("retry healing", "/v1/nodes/" + name + "/healing/retry");
  return cell;
}

function nodeRow(node) {
  const row = element("tr");
  row.dataset.node = node.name;
  const stats = node.stats || {};
  const healing = node.healing ? node.healing.phase : "healthy";
  row.appendChild(element("td", node.name, "name"));
  row.appendChild(element("td", node.status, "status status-" + node.status));
  const serving = element("td", node.serving_version || node.version, "serving");
  const versions = Object.entries(node.versions || {});
  if (versions.length > 1) {
    const list = versions.map(([version, figures]) =>
      version + " " + percent(figures.success_rate) + " ok, p99 " + ms(figures.p99_ms)).join("; ");
    serving.appendChild(element("div", list, "versions"));
  }
  row.appendChild(serving);
  row.appendChild(element("td", healingText(node), "healing status-" + healing));
  row.appendChild(rolloutCell(node));
  row.appendChild(element("td", stats.rps === undefined ? "–" : stats.rps.toFixed(1), "num rps"));
  row.appendChild(element("td", percent(stats.success_rate), "num success"));
  row.appendChild(element("td", ms(stats.p99_ms), "num p99"));
  row.appendChild(element("td", (node.proxies || []).length, "num proxies"));
  row.appendChild(element("td", node.desired_revision, "num revision"));
  row.appendChild(actions(node));
  return row;
}

// Rows are updated in place, cell by cell, and a cell is replaced only when what it shows changed:
// a button under the pointer stays the same element across refreshes (a click is never lost to a
// redraw), and so does a selection of text.
function renderNodes(nodes) {
  const body = $("#nodes tbody");
  $("#no-nodes").hidden = nodes.length > 0;
  const shown = new Map(Array.from(body.rows, (row) => [row.dataset.node, row]));
  const rows = nodes.map((node) => {
    const fresh = nodeRow(node);
    const row = shown.get(node.name);
    if (!row || row.cells.length !== fresh.cells.length) return fresh;
    Array.from(fresh.cells).forEach((cell, at) => {
      if (row.cells[at].outerHTML !== cell.outerHTML) row.cells[at].replaceWith(cell);
    });
    return row;
  });
  const same = rows.length === body.rows.length && rows.every((row, at) => body.rows[at] === row);
  if (!same) body.replaceChildren(...rows);
}

// Each event type with the nodes that publish and consume it (`node@major`); an event whose consumer
// expects a major no producer publishes is shown as an error.
function renderMap(map) {
  const body = $("#map tbody");
  body.replaceChildren();
  const mismatched = new Set((map.edges || []).filter((edge) => edge.mismatch).map((edge) => edge.event));
  const uses = (list) => (list || []).map((use) => use.node + "@" + use.major).join(", ") || "–";
  $("#no-events").hidden = (map.events || []).length > 0;
  for (const event of map.events || []) {
    const row = element("tr");
    row.dataset.event = event.name;
    row.appendChild(element("td", event.name, mismatched.has(event.name) ? "error" : ""));
    row.appendChild(element("td", uses(event.producers), "producers"));
    row.appendChild(element("td", uses(event.consumers), "consumers"));
    body.appendChild(row);
  }
}

// Fields as `key=value`, for an entry served without its summary.
function summary(detail) {
  if (!detail || typeof detail !== "object") return detail === null || detail === undefined ? "" : String(detail);
  return Object.entries(detail)
    .filter(([, value]) => value !== null)
    .map(([key, value]) => key + "=" + (typeof value === "string" ? value : JSON.stringify(value)))
    .join(" ");
}

function addEntry(entry) {
  if (entry.seq <= lastSeq) return;
  lastSeq = entry.seq;
  $("#head").textContent = "journal head " + entry.seq;
  const list = $("#journal");
  const item = element("li");
  item.value = entry.seq;
  item.dataset.kind = entry.kind;
  item.dataset.seq = entry.seq;
  item.appendChild(element("span", new Date(entry.unix_ms).toLocaleTimeString() + " ", "muted"));
  item.appendChild(element("span", entry.kind, "kind"));
  if (entry.node) item.appendChild(element("span", " " + entry.node, "node"));
  item.appendChild(element("span", " " + (entry.summary || summary(entry.detail).slice(0, 300)), "detail"));
  list.insertBefore(item, list.firstChild);
  while (list.children.length > JOURNAL_KEPT) list.removeChild(list.lastChild);
}

// The journal's SSE stream read with fetch (EventSource cannot send the token); on a drop it
// resumes after the last entry seen.
async function follow() {
  if (following) return;
  following = true;
  try {
    await followStream();
  } finally {
    following = false;
  }
}

async function followStream() {
  for (;;) {
    try {
      const response = await fetch("/v1/journal/stream", {
        headers: { Authorization: "Bearer " + token, "Last-Event-ID": String(lastSeq) },
      });
      if (response.status === 401) throw new Unauthorized("the token was refused");
      if (!response.ok || !response.body) throw new Error("journal stream: " + response.status);
      setState("live", "live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split("\n").filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
          if (!data) continue;
          try {
            addEntry(JSON.parse(data));
            scheduleRefresh();
          } catch (error) {
            console.warn("an unreadable journal entry", error);
          }
        }
      }
    } catch (error) {
      if (error instanceof Unauthorized) return askForToken(error.message);
      setState("reconnecting…", "down");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// A journal entry usually means a node changed: refresh soon, at most once per 250 ms.
function scheduleRefresh() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, 250);
}

async function refresh() {
  try {
    const [nodes, map] = await Promise.all([api("/v1/nodes"), api("/v1/map")]);
    renderNodes(nodes);
    renderMap(map);
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken(error.message);
    setState("control unreachable: " + error.message, "down");
  }
}

async function start() {
  token = takeToken();
  if (!token) return askForToken();
  $("#token-form").hidden = true;
  $("#main").hidden = false;
  try {
    for (const entry of await api("/v1/journal?last=" + JOURNAL_KEPT)) addEntry(entry);
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken(error.message);
  }
  await refresh();
  follow();
  if (refreshInterval === null) refreshInterval = setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value);
    start();
  });
  // A link with another token opened in this tab: start over with it.
  window.addEventListener("hashchange", () => {
    if (/(?:^|&)token=/.test(location.hash.slice(1))) {
      takeToken();
      location.reload();
    }
  });
  start();
});
