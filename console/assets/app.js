// kvd console: polls this node's JSON API while the page is open and
// draws the cluster. Every string from the cluster (node ids, keys,
// values) is set as text, never as markup.
"use strict";

const SLOTS = 1024;
const POLL_MS = 2000;
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

let token = sessionStorage.getItem("kvd-token") || "";
let previous = null;
let statuses = null;      // the last GET /v1/status?nodes=all, by node id
let lastSample = null;    // {at, byNode} for rates between two polls
let rates = { nodes: {}, groups: {}, groupTraffic: {} };
const events = [];
let scanNext = "";
let scanPrefix = "";
let scanning = false;

function $(id) { return document.getElementById(id); }

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

async function api(path, init) {
  const headers = Object.assign({}, (init && init.headers) || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(path, Object.assign({ cache: "no-store" }, init || {}, { headers }));
  if (resp.status === 401) {
    $("token-form").hidden = false;
    throw new Error("this cluster needs a token");
  }
  return resp;
}

async function apiJSON(path, init) {
  const resp = await api(path, init);
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
    const st = statuses ? statuses[n.id] : undefined;
    const health = !st ? "?" : st.up ? "up" : "down";
    const r = rates.nodes[n.id];
    tr.append(el("td", n.id), el("td", n.http), el("td", n.state || "active", { class: "state-" + (n.state || "active") }),
      el("td", health, { class: "health health-" + health, title: st && st.error ? st.error : "" }),
      el("td", r ? r.rps.toFixed(0) : "—"), el("td", r && r.p99 !== null ? "≤ " + fmtSeconds(r.p99) : "—"),
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
    const gr = rates.groups[g.id];
    const gt = rates.groupTraffic[g.id];
    tr.append(id, el("td", g.leader || "none", { class: g.leader ? "leader" : "leader none" }),
      el("td", (g.members || []).join(", ")), el("td", (g.learners || []).join(", ") || "—"), el("td", rangesText(g.slots)),
      el("td", gt ? gt.rps.toFixed(0) : "—"), el("td", gt && gt.p99 !== null ? "≤ " + fmtSeconds(gt.p99) : "—"),
      el("td", gr ? gr.toFixed(0) : "—"), el("td", fmtBytes(groupBytes(g))), el("td", replicasText(g)));
    body.appendChild(tr);
  }
  $("group-count").textContent = "(" + c.groups.length + ")";
  const moves = c.moves || [];
  $("moves").textContent = moves.length ? "Slot moves under way: " + moves.map(m => JSON.stringify(m)).join("; ") : "";
}

function fmtSeconds(s) {
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms" : s.toFixed(1) + " s";
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

// groupStatus returns node's status of group id, if it answered.
function groupStatus(node, id) {
  const st = statuses && statuses[node];
  if (!st || !st.status) return null;
  return (st.status.groups || []).find(x => x.group === id) || null;
}

function groupBytes(g) {
  const gs = groupStatus(g.leader, g.id) || (g.members || []).map(m => groupStatus(m, g.id)).find(x => x);
  return gs ? gs.disk_bytes || gs.state_bytes || 0 : null;
}

function replicasText(g) {
  const lead = groupStatus(g.leader, g.id);
  const top = lead ? lead.commit_index : 0;
  return [...(g.members || []), ...(g.learners || [])].map(m => {
    const gs = groupStatus(m, g.id);
    if (!gs) return m + " ?";
    return m + " " + gs.applied_index + (top ? " (" + Math.max(0, top - gs.applied_index) + ")" : "");
  }).join(", ");
}

// sample turns two polls of every node's status into rates: requests per
// second and their p99 per node, commits per second per group (at its
// leader).
// trafficRate turns two samples of a traffic counter into requests per
// second and the bound their p99 falls under.
function trafficRate(cur, prev, dt) {
  if (!cur || !prev || dt <= 0) return null;
  const n = cur.requests - prev.requests;
  let p99 = null;
  if (n > 0) {
    const counts = cur.latency_counts.map((c, i) => c - prev.latency_counts[i]);
    const i = counts.findIndex(c => c >= 0.99 * n);
    p99 = i < 0 ? Infinity : cur.latency_bounds[i];
  }
  return { rps: n / dt, p99 };
}

// groupTraffic sums group g's traffic over every node that served it.
function sumTraffic(byNode) {
  const out = {};
  for (const st of Object.values(byNode)) {
    for (const g of st.groups || []) {
      if (!g.traffic) continue;
      const t = out[g.group] || (out[g.group] = { requests: 0, latency_bounds: g.traffic.latency_bounds, latency_counts: g.traffic.latency_counts.map(() => 0) });
      t.requests += g.traffic.requests;
      g.traffic.latency_counts.forEach((c, i) => { t.latency_counts[i] += c; });
    }
  }
  return out;
}

function sample(nodes) {
  const at = performance.now();
  const byNode = {};
  for (const n of nodes) if (n.up && n.status) byNode[n.node] = n.status;
  const byGroup = sumTraffic(byNode);
  if (lastSample) {
    const dt = (at - lastSample.at) / 1000;
    const next = { nodes: {}, groups: {}, groupTraffic: {} };
    for (const [g, t] of Object.entries(byGroup)) {
      const r = trafficRate(t, lastSample.byGroup[g], dt);
      if (r) next.groupTraffic[g] = r;
    }
    for (const [id, st] of Object.entries(byNode)) {
      const prev = lastSample.byNode[id];
      if (!prev || !st.traffic || !prev.traffic || dt <= 0) continue;
      const n = st.traffic.requests - prev.traffic.requests;
      let p99 = null;
      if (n > 0) {
        const counts = st.traffic.latency_counts.map((c, i) => c - prev.traffic.latency_counts[i]);
        const i = counts.findIndex(c => c >= 0.99 * n);
        p99 = i < 0 ? Infinity : st.traffic.latency_bounds[i];
      }
      next.nodes[id] = { rps: n / dt, p99 };
      for (const g of st.groups || []) {
        if (g.role !== "leader") continue;
        const pg = (prev.groups || []).find(x => x.group === g.group);
        if (pg) next.groups[g.group] = Math.max(0, g.commit_index - pg.commit_index) / dt;
      }
    }
    rates = next;
  }
  lastSample = { at, byNode, byGroup };
}

// serverEvents are the nodes' own event logs (GET /v1/events?nodes=all):
// leaders elected and map changes, recorded when they happened.
let serverEvents = [];

function note(text) {
  events.unshift({ at: new Date(), text: "seen: " + text });
  events.length = Math.min(events.length, 100);
  drawEvents();
}

function drawEvents() {
  const all = [...events, ...serverEvents].sort((a, b) => b.at - a.at).slice(0, 60);
  const ol = $("events");
  ol.replaceChildren();
  for (const e of all) ol.appendChild(el("li", e.at.toLocaleString() + "  " + e.text, { class: e.kind ? "event-" + e.kind : "event-seen" }));
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

// isAdmin is whether the token may use the operations API: the admin
// section shows only then. The API refuses others whatever the page does.
let isAdmin = null;

async function checkAdmin() {
  try {
    const resp = await api("/v1/admin/moves");
    isAdmin = resp.ok;
  } catch {
    isAdmin = false;
  }
  $("admin").hidden = !isAdmin;
}

function fillSelect(sel, values) {
  const keep = sel.value;
  sel.replaceChildren(...values.map(v => el("option", v, { value: v })));
  if (values.includes(keep)) sel.value = keep;
}

function drawAdmin(c) {
  if (!isAdmin) return;
  const groups = c.groups.map(g => String(g.id));
  fillSelect($("leader-group"), groups);
  fillSelect($("move-group"), groups);
  const g = c.groups.find(x => String(x.id) === $("leader-group").value);
  fillSelect($("leader-node"), g ? (g.members || []).filter(m => m !== g.leader) : []);
}

async function adminPost(path, body) {
  const out = $("admin-result");
  out.textContent = "…";
  try {
    const resp = await api(path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    const text = await resp.text();
    let msg = text;
    try {
      const j = JSON.parse(text);
      msg = j.error ? j.error.code + ": " + j.error.message : (j.message || j.state || text);
    } catch { /* not JSON */ }
    out.textContent = resp.status + " " + msg;
  } catch (err) {
    out.textContent = String(err.message || err);
  }
  refresh();
}

async function refresh() {
  try {
    const [c, all, ev] = await Promise.all([apiJSON("/v1/cluster"), apiJSON("/v1/status?nodes=all").catch(() => null),
      apiJSON("/v1/events?nodes=all").catch(() => null)]);
    if (ev) {
      serverEvents = (ev.events || []).map(e => ({ at: new Date(e.time), kind: e.kind, text: e.text + " (" + e.node + ")" }));
      drawEvents();
    }
    if (all) {
      statuses = {};
      for (const n of all.nodes || []) statuses[n.node] = n;
      sample(all.nodes || []);
    }
    const order = c.groups.map(g => g.id);
    diff(previous, c);
    previous = c;
    $("epoch").textContent = "epoch " + c.epoch;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    drawSlots(c, order);
    drawNodes(c);
    drawGroups(c, order);
    drawAdmin(c);
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
  if (scanning) return; // one page at a time
  if (fresh) { scanNext = ""; scanPrefix = $("prefix").value; }
  const prefix = scanPrefix; // the next page is of the scan shown
  const q = new URLSearchParams({ prefix, limit: "50" });
  if (scanNext) q.set("start", scanNext);
  scanning = true;
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
  } finally {
    scanning = false;
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
  checkAdmin().then(refresh);
});
$("scan-form").addEventListener("submit", e => { e.preventDefault(); scan(true); });
$("leader-group").addEventListener("change", () => previous && drawAdmin(previous));
$("leader-form").addEventListener("submit", e => {
  e.preventDefault();
  adminPost("/v1/admin/groups/" + encodeURIComponent($("leader-group").value) + "/leader", { node: $("leader-node").value });
});
$("move-form").addEventListener("submit", e => {
  e.preventDefault();
  const a = Number($("move-from").value), b = Number($("move-to-slot").value || $("move-from").value);
  adminPost("/v1/admin/moves", { slots: [[a, b]], to: Number($("move-group").value) });
});
$("rebalance-form").addEventListener("submit", e => { e.preventDefault(); adminPost("/v1/admin/rebalance", {}); });
$("more").addEventListener("click", () => scan(false));

checkAdmin().then(refresh);
let timer = setInterval(refresh, POLL_MS);
// A hidden tab stops polling: the node does nothing for a page nobody sees.
document.addEventListener("visibilitychange", () => {
  clearInterval(timer);
  if (!document.hidden) { refresh(); timer = setInterval(refresh, POLL_MS); }
});
