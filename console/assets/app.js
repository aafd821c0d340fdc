// kvd console: polls this node's JSON API while the page is open and
// draws the cluster. Every string from the cluster (node ids, keys,
// values) is set as text, never as markup.
"use strict";

const SLOTS = 1024;
const POLL_MS = 2000;
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

let token = sessionStorage.getItem("kvd-token") || "";
let previous = null;
const events = [];
let scanNext = "";

function $(id) { return document.getElementById(id); }

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

async function api(path) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (resp.status === 401) {
    $("token-form").hidden = false;
    throw new Error("this cluster needs a token");
  }
  return resp;
}

async function apiJSON(path) {
  const resp = await api(path);
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const msg = body && body.error ? body.error.code + ": " + body.error.message : resp.status + " " + resp.statusText;
    throw new Error(msg);
  }
  return body;
}

function showError(err) {
  const p = $("error");
  if (!err) { p.hidden = true; return; }
  p.textContent = String(err.message || err);
  p.hidden = false;
}

function groupColor(id, order) {
  const i = order.indexOf(id);
  return COLORS[(i < 0 ? id : i) % COLORS.length];
}

function rangesText(slots) {
  return (slots || []).map(r => r[0] === r[1] ? String(r[0]) : r[0] + "–" + r[1]).join(", ") || "none";
}

function drawSlots(c, order) {
  const owner = new Array(SLOTS).fill(0);
  for (const g of c.groups) for (const [a, b] of g.slots || []) for (let s = a; s <= b && s < SLOTS; s++) owner[s] = g.id;
  const bar = $("slot-bar");
  bar.replaceChildren();
  let start = 0;
  for (let s = 1; s <= SLOTS; s++) {
    if (s === SLOTS || owner[s] !== owner[start]) {
      const d = el("div", null, { "data-group": owner[start], title: "slots " + start + "–" + (s - 1) + ": group " + owner[start] });
      d.style.flexGrow = String(s - start);
      d.style.background = owner[start] ? groupColor(owner[start], order) : "#eee";
      bar.appendChild(d);
      start = s;
    }
  }
  const legend = $("slot-legend");
  legend.replaceChildren();
  for (const g of c.groups) {
    const s = el("span");
    const i = el("i");
    i.style.background = groupColor(g.id, order);
    s.append(i, "group " + g.id);
    legend.appendChild(s);
  }
}

function drawNodes(c) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of c.nodes) {
    const leads = c.groups.filter(g => g.leader === n.id).map(g => g.id);
    const holds = c.groups.filter(g => (g.members || []).includes(n.id) || (g.learners || []).includes(n.id)).map(g => g.id);
    const tr = el("tr", null, { "data-node": n.id });
    tr.append(el("td", n.id), el("td", n.http), el("td", n.state || "active", { class: "state-" + (n.state || "active") }),
      el("td", leads.join(", ") || "—"), el("td", holds.join(", ") || "—"));
    body.appendChild(tr);
  }
  $("node-count").textContent = "(" + c.nodes.length + ")";
}

function drawGroups(c, order) {
  const body = $("groups").tBodies[0];
  body.replaceChildren();
  for (const g of c.groups) {
    const tr = el("tr", null, { "data-group": g.id });
    const id = el("td");
    const sw = el("i");
    sw.style.cssText = "display:inline-block;width:.7rem;height:.7rem;margin-right:.3rem;background:" + groupColor(g.id, order);
    id.append(sw, String(g.id));
    tr.append(id, el("td", g.leader || "none", { class: g.leader ? "leader" : "leader none" }),
      el("td", (g.members || []).join(", ")), el("td", (g.learners || []).join(", ") || "—"), el("td", rangesText(g.slots)));
    body.appendChild(tr);
  }
  $("group-count").textContent = "(" + c.groups.length + ")";
  const moves = c.moves || [];
  $("moves").textContent = moves.length ? "Slot moves under way: " + moves.map(m => JSON.stringify(m)).join("; ") : "";
}

function note(text) {
  events.unshift({ at: new Date(), text });
  events.length = Math.min(events.length, 100);
  const ol = $("events");
  ol.replaceChildren();
  for (const e of events) ol.appendChild(el("li", e.at.toLocaleTimeString() + "  " + e.text));
}

function diff(prev, cur) {
  if (!prev) return;
  const before = new Map(prev.groups.map(g => [g.id, g]));
  const after = new Map(cur.groups.map(g => [g.id, g]));
  for (const [id, g] of after) {
    const p = before.get(id);
    if (!p) { note("group " + id + " created on " + (g.members || []).join(", ")); continue; }
    if ((p.leader || "") !== (g.leader || "")) note("group " + id + ": leader " + (p.leader || "none") + " → " + (g.leader || "none"));
    const pm = (p.members || []).join(","), gm = (g.members || []).join(",");
    if (pm !== gm) note("group " + id + ": voters " + (pm || "none") + " → " + (gm || "none"));
    const pl = (p.learners || []).join(","), gl = (g.learners || []).join(",");
    if (pl !== gl) note("group " + id + ": learners " + (pl || "none") + " → " + (gl || "none"));
    if (rangesText(p.slots) !== rangesText(g.slots)) note("group " + id + ": slots " + rangesText(p.slots) + " → " + rangesText(g.slots));
  }
  for (const id of before.keys()) if (!after.has(id)) note("group " + id + " removed");
  const pn = new Map(prev.nodes.map(n => [n.id, n]));
  for (const n of cur.nodes) {
    const p = pn.get(n.id);
    if (!p) note("node " + n.id + " joined (" + n.http + ")");
    else if ((p.state || "") !== (n.state || "")) note("node " + n.id + ": " + (p.state || "active") + " → " + (n.state || "active"));
    pn.delete(n.id);
  }
  for (const id of pn.keys()) note("node " + id + " left");
}

async function refresh() {
  try {
    const c = await apiJSON("/v1/cluster");
    const order = c.groups.map(g => g.id);
    diff(previous, c);
    previous = c;
    $("epoch").textContent = "epoch " + c.epoch;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    drawSlots(c, order);
    drawNodes(c);
    drawGroups(c, order);
    showError(null);
  } catch (err) {
    showError(err);
  }
}

function b64bytes(b64) {
  const s = atob(b64 || "");
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function asText(bytes) {
  try { return new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch { return null; }
}

function asHex(bytes) {
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join(" ");
}

function preview(bytes) {
  const t = asText(bytes);
  const s = t === null ? asHex(bytes.slice(0, 32)) : t;
  return s.length > 80 ? s.slice(0, 80) + "…" : s;
}

async function scan(fresh) {
  const prefix = $("prefix").value;
  if (fresh) scanNext = "";
  const q = new URLSearchParams({ prefix, limit: "50" });
  if (scanNext) q.set("start", scanNext);
  try {
    const page = await apiJSON("/v1/kv?" + q.toString());
    const body = $("keys").tBodies[0];
    if (fresh) body.replaceChildren();
    for (const it of page.items || []) {
      const bytes = b64bytes(it.value);
      const tr = el("tr", null, { "data-key": it.key });
      const k = el("td", it.key);
      k.addEventListener("click", () => showKey(it.key));
      tr.append(k, el("td", it.version), el("td", preview(bytes)));
      body.appendChild(tr);
    }
    scanNext = page.more ? page.next : "";
    $("more").hidden = !page.more;
    showError(null);
  } catch (err) {
    showError(err);
  }
}

async function showKey(key) {
  try {
    const resp = await api("/v1/kv/" + encodeURIComponent(key));
    if (!resp.ok) {
      const body = await resp.json().catch(() => null);
      throw new Error(body && body.error ? body.error.message : resp.status + " " + resp.statusText);
    }
    const bytes = new Uint8Array(await resp.arrayBuffer());
    $("key-detail").hidden = false;
    $("detail-key").textContent = key;
    const ttl = resp.headers.get("X-Kvd-Expires");
    $("detail-meta").textContent = "version " + (resp.headers.get("ETag") || "").replaceAll('"', "") +
      ", " + bytes.length + " bytes" + (ttl ? ", expires " + ttl : ", no ttl");
    const draw = () => {
      const t = asText(bytes);
      $("detail-value").textContent = ($("as-hex").checked || t === null) ? asHex(bytes) : t;
    };
    $("as-hex").onchange = draw;
    draw();
    showError(null);
  } catch (err) {
    showError(err);
  }
}

$("token-button").addEventListener("click", () => { $("token-form").hidden = !$("token-form").hidden; });
$("token-form").addEventListener("submit", e => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("kvd-token", token);
  $("token-form").hidden = true;
  refresh();
});
$("scan-form").addEventListener("submit", e => { e.preventDefault(); scan(true); });
$("more").addEventListener("click", () => scan(false));

refresh();
let timer = setInterval(refresh, POLL_MS);
// A hidden tab stops polling: the node does nothing for a page nobody sees.
document.addEventListener("visibilitychange", () => {
  clearInterval(timer);
  if (!document.hidden) { refresh(); timer = setInterval(refresh, POLL_MS); }
});
