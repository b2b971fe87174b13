"use strict";
// The browser phone: talks to this daemon's /api/webrtc with the bearer token typed in (kept for
// the tab's session, shared with the calls page). Media goes over WebRTC; call events come back
// on the "events" data channel.

const TOKEN_KEY = "callbridge.token";
const $ = (id) => document.getElementById(id);

// What the page saw, for people and for tests: agent audio level every 20 ms, events received.
const phone = window.phone = {
  state: "idle", callId: null, agentLevels: [], events: [], started: 0, iceServers: [],
};
let token = null;
let pc = null;
let channel = null;
let mic = null;
let audioCtx = null;
let timers = [];

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token, ...(options.headers || {}) };
  const resp = await fetch(path, { ...options, headers, cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.error) || ("HTTP " + resp.status));
    err.status = resp.status;
    throw err;
  }
  return body;
}

async function signIn(value) {
  token = value;
  try {
    const data = await api("/api/webrtc/numbers");
    sessionStorage.setItem(TOKEN_KEY, token);
    phone.iceServers = data.ice_servers || [];
    const select = $("number");
    select.replaceChildren();
    for (const tenant of data.tenants) {
      for (const number of tenant.numbers) {
        const option = document.createElement("option");
        option.value = number;
        option.textContent = number + " — " + (tenant.name || tenant.tenant);
        select.append(option);
      }
    }
    $("phone").hidden = false;
    $("signout").hidden = false;
    $("signin").hidden = true;
    showError(select.options.length ? "" : "This token has no numbers to call.");
  } catch (err) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showError(err.status === 401 ? "Sign-in failed: the token was not accepted." : "Sign-in failed: " + err.message);
  }
}

function signOut() {
  hangUp();
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("phone").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
}

function setState(state) {
  phone.state = state;
  $("state").textContent = state;
  const active = state === "connecting" || state === "in call";
  $("call").disabled = active;
  $("hangup").disabled = !active;
}

function setAgent(speaking) {
  $("agent").textContent = speaking ? "speaking" : "listening";
  $("agent").classList.toggle("speaking", speaking);
}

function addTranscript(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role;
  item.append(who, document.createTextNode(text));
  $("transcript").append(item);
}

function level(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const v of buffer) sum += v * v;
  return Math.sqrt(sum / buffer.length);
}

function meter(stream, onLevel) {
  const source = audioCtx.createMediaStreamSource(stream);
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  timers.push(setInterval(() => onLevel(level(analyser, buffer)), 20));
}

async function waitForIce(connection) {
  if (connection.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const done = () => { if (connection.iceGatheringState === "complete") resolve(); };
    connection.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);  // host candidates come at once; a slow STUN server must not hold the call
  });
}

function onEvent(message) {
  let event;
  try { event = JSON.parse(message.data); } catch (e) { return; }
  phone.events.push({ t: performance.now() - phone.started, ...event });
  if (event.type === "call") {
    phone.callId = event.call_id;
  } else if (event.type === "transcript") {
    addTranscript(event.role, event.text);
  } else if (event.type === "agent") {
    setAgent(event.state === "speaking");
  } else if (event.type === "ended") {
    finish();
  }
}

async function call() {
  showError("");
  $("after").hidden = true;
  $("transcript").replaceChildren();
  phone.agentLevels = [];
  phone.events = [];
  setState("connecting");
  try {
    mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    audioCtx = new AudioContext();
    pc = new RTCPeerConnection({ iceServers: phone.iceServers });
    channel = pc.createDataChannel("events");
    channel.onmessage = onEvent;
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      $("remote").srcObject = stream;
      meter(stream, (rms) => phone.agentLevels.push([performance.now() - phone.started, rms]));
    };
    pc.onconnectionstatechange = () => {
      if (pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) finish();
    };
    meter(mic, (rms) => { $("mic").value = Math.min(1, rms * 4); });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const answer = await api("/api/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp, number: $("number").value }),
    });
    phone.callId = answer.call_id;
    phone.started = performance.now();
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    setState("in call");
    timers.push(setInterval(() => {
      const s = Math.floor((performance.now() - phone.started) / 1000);
      $("duration").textContent = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
    }, 500));
  } catch (err) {
    showError("Call failed: " + err.message);
    phone.error = err.message;
    phone.errorStatus = err.status || 0;
    finish();
  }
}

function hangUp() {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "hangup" }));
  finish();
}

function finish() {
  if (phone.state === "ended" || phone.state === "idle" && !pc) return;
  for (const t of timers) clearInterval(t);
  timers = [];
  if (pc) pc.close();
  pc = null;
  channel = null;
  if (mic) for (const track of mic.getTracks()) track.stop();
  mic = null;
  if (audioCtx) audioCtx.close();
  audioCtx = null;
  setState("ended");
  setAgent(false);
  if (phone.callId) {
    $("call-link").href = "/ops/#call=" + encodeURIComponent(phone.callId);
    $("after").hidden = false;
  }
}

function press(digit) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "dtmf", digit }));
}

$("login").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
$("signout").addEventListener("click", signOut);
$("call").addEventListener("click", call);
$("hangup").addEventListener("click", hangUp);
for (const button of $("keypad").querySelectorAll("button")) {
  button.addEventListener("click", () => press(button.textContent));
}
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
