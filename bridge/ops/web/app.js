// callbridge ops page: list calls, play a recording with its waveform, read the transcript.
// Talks only to this daemon's /api with the bearer token typed in (kept for the tab's session).
"use strict";

const TOKEN_KEY = "callbridge.token";
const PAGE = 50;
const $ = (id) => document.getElementById(id);
const state = { token: null, offset: 0, total: 0, peaks: null, duration: 0, selected: null, drawing: false };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + state.token }, cache: "no-store" });
  if (!resp.ok) {
    let message = resp.statusText;
    try { message = (await resp.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  return resp.json();
}

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

function handle(err) {
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
    if (err.status === 401) signOut();
    showError(`Token refused (${err.status}): ${err.message}`);
  } else {
    showError(String(err.message || err));
  }
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmtTime(isoText) {
  return isoText ? isoText.replace("T", " ").replace(/\.\d+Z$/, "") : "";
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function signIn(token) {
  state.token = token;
  try {
    const me = await api("/api/whoami");
    sessionStorage.setItem(TOKEN_KEY, token);
    showError("");
    $("whoami").textContent = me.role === "admin" ? "admin" : `tenant ${me.tenant}`;
    $("signout").hidden = false;
    const tenant = $("f-tenant");
    tenant.disabled = me.role !== "admin";
    tenant.value = me.role === "admin" ? tenant.value : me.tenant;
    $("app").hidden = false;
    await loadCalls(0);
    // A link to one call (/ops/#call=<id>, as the phone page gives after a call) opens it.
    const linked = /^#call=([A-Za-z0-9._-]+)$/.exec(location.hash);
    if (linked) await openCall(decodeURIComponent(linked[1]));
  } catch (err) {
    handle(err);
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("app").hidden = true;
  $("whoami").textContent = "";
  $("signout").hidden = true;
  $("player").removeAttribute("src");
}

function filters() {
  const params = new URLSearchParams();
  const tenant = $("f-tenant");
  if (!tenant.disabled && tenant.value.trim()) params.set("tenant", tenant.value.trim());
  if ($("f-number").value.trim()) params.set("number", $("f-number").value.trim());
  for (const [id, name] of [["f-since", "since"], ["f-until", "until"]]) {
    const value = $(id).value;
    if (value) params.set(name, new Date(value).toISOString());
  }
  if ($("f-outcome").value) params.set("outcome", $("f-outcome").value);
  return params;
}

async function loadCalls(offset) {
  const params = filters();
  params.set("limit", String(PAGE));
  params.set("offset", String(offset));
  const page = await api("/api/calls?" + params.toString());
  state.offset = page.offset;
  state.total = page.total;
  const body = $("calls").querySelector("tbody");
  body.replaceChildren();
  for (const call of page.calls) {
    const row = el("tr");
    row.dataset.callId = call.call_id;
    for (const value of [fmtTime(call.started_at), call.tenant, call.dialled, call.caller_id,
                         fmtDuration(call.duration), call.outcome || "", call.status]) {
      row.append(el("td", value));
    }
    row.addEventListener("click", () => openCall(call.call_id).catch(handle));
    if (call.call_id === state.selected) row.classList.add("selected");
    body.append(row);
  }
  const last = Math.min(page.offset + page.calls.length, page.total);
  $("range").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no calls";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

async function openCall(callId) {
  state.selected = callId;
  for (const row of document.querySelectorAll("#calls tbody tr")) {
    row.classList.toggle("selected", row.dataset.callId === callId);
  }
  const call = await api(`/api/calls/${encodeURIComponent(callId)}`);
  $("detail").hidden = false;
  $("detail").dataset.callId = callId;
  $("d-title").textContent = `${call.dialled} ← ${call.caller_id || "unknown"}`;
  const meta = $("d-meta");
  meta.replaceChildren();
  const rows = [
    ["Call", call.call_id], ["Tenant", call.tenant], ["Transport", call.transport],
    ["Started", fmtTime(call.started_at)], ["Answered", fmtTime(call.answered_at)],
    ["Ended", fmtTime(call.ended_at)], ["Duration", fmtDuration(call.duration)],
    ["Outcome", call.outcome || ""], ["Status", call.status], ["Barge-ins", call.barge_ins],
    ["Model", call.model], ["Voice", call.voice],
  ];
  if (call.transfer_target) rows.push(["Transferred to", call.transfer_target]);
  for (const [k, v] of rows) { meta.append(el("dt", k), el("dd", v)); }

  const player = $("player");
  player.pause();
  player.removeAttribute("src");
  state.peaks = null;
  const available = call.recording.available && call.status !== "in_progress";
  $("d-norec").hidden = available;
  player.hidden = !available;
  $("waveform").hidden = !available;
  const transcript = api(`/api/calls/${encodeURIComponent(callId)}/transcript`);
  if (available) {
    const [link, peaks] = await Promise.all([
      api(`/api/calls/${encodeURIComponent(callId)}/recording/link`),
      api(`/api/calls/${encodeURIComponent(callId)}/waveform`).catch(() => null),
    ]);
    player.src = link.url;
    state.peaks = peaks;
    state.duration = peaks && peaks.rate ? peaks.frames / peaks.rate : call.recording.seconds;
    drawWaveform();
  }
  renderTranscript((await transcript).entries);
}

function renderTranscript(entries) {
  const list = $("transcript");
  list.replaceChildren();
  for (const entry of entries) {
    const item = el("li", null, entry.role === "agent" ? "agent" : "caller");
    const offset = Number(entry.offset) || 0;
    item.append(el("span", fmtDuration(offset), "at"), el("span", entry.role, "who"), el("span", entry.text, "text"));
    item.addEventListener("click", () => { const p = $("player"); if (p.src) { p.currentTime = offset; p.play().catch(() => {}); } });
    list.append(item);
  }
}

function drawWaveform() {
  const canvas = $("waveform");
  const ctx = canvas.getContext("2d");
  const width = canvas.width;
  const height = canvas.height;
  ctx.clearRect(0, 0, width, height);
  const peaks = state.peaks;
  if (!peaks || !peaks.peaks) return;
  const colours = [getComputedStyle(document.documentElement).getPropertyValue("--caller") || "#1f6feb",
                   getComputedStyle(document.documentElement).getPropertyValue("--agent") || "#d9480f"];
  const lane = height / peaks.peaks.length;
  peaks.peaks.forEach((channel, index) => {
    const mid = lane * index + lane / 2;
    ctx.fillStyle = colours[index % 2].trim();
    const n = channel.length;
    for (let i = 0; i < n; i++) {
      const x = Math.floor((i / n) * width);
      const w = Math.max(1, Math.ceil(width / n));
      const [lo, hi] = channel[i];
      const top = mid - (hi / 32768) * (lane / 2);
      const bottom = mid - (lo / 32768) * (lane / 2);
      ctx.fillRect(x, top, w, Math.max(1, bottom - top));
    }
    ctx.fillStyle = "#57606a";
    ctx.font = "11px system-ui";
    ctx.fillText(index === 0 ? "caller" : "agent", 4, lane * index + 12);
  });
  const player = $("player");
  if (state.duration > 0) {
    const x = (player.currentTime / state.duration) * width;
    ctx.fillStyle = "#24292f";
    ctx.fillRect(x, 0, 1, height);
  }
}

function animate() {
  drawWaveform();
  if (!$("player").paused) requestAnimationFrame(animate);
  else state.drawing = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("signout").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCalls(0).catch(handle);
  });
  $("prev").addEventListener("click", () => loadCalls(Math.max(0, state.offset - PAGE)).catch(handle));
  $("next").addEventListener("click", () => loadCalls(state.offset + PAGE).catch(handle));
  const player = $("player");
  player.addEventListener("play", () => { if (!state.drawing) { state.drawing = true; animate(); } });
  player.addEventListener("seeked", drawWaveform);
  $("waveform").addEventListener("click", (event) => {
    if (!player.src || !state.duration) return;
    const rect = event.currentTarget.getBoundingClientRect();
    player.currentTime = ((event.clientX - rect.left) / rect.width) * state.duration;
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
});
