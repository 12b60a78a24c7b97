// The w2v page: the microphone over the WebSocket (/ws, Vosk's protocol: a JSON config, 16-bit PCM
// frames, {"eof": 1}; partial and final JSON results), and files through the OpenAI endpoint.
"use strict";
const $ = (id) => document.getElementById(id);
const FRAME_MS = 100;                       // audio per WebSocket message

function token() { return $("token").value.trim(); }
function authHeaders() { return token() ? { Authorization: "Bearer " + token() } : {}; }
function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function clock(s) {
  const m = Math.floor(s / 60), r = (s - 60 * m).toFixed(2).padStart(5, "0");
  return m + ":" + r;
}
function errorText(body, fallback) { return (body && body.error && body.error.message) || fallback; }

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    const body = await r.json();
    if (!r.ok) { status(errorText(body, "cannot list models"), true); return; }
    const select = $("model"), keep = select.value;
    select.replaceChildren();
    for (const m of body.data) {
      const o = document.createElement("option");
      o.value = m.id; o.textContent = m.id + (m.language ? " (" + m.language + ")" : "");
      if (m.default && !keep) o.selected = true;
      select.appendChild(o);
    }
    if (keep) select.value = keep;
    status("ready");
  } catch (e) { status("cannot reach the server: " + e, true); }
}

// ------------------------------------------------------------------ microphone
let live = null;                             // {ctx, media, node, ws, pending, queue}

function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out.buffer;
}

function sendAudio(session, buffer) {
  if (session.ws.readyState === WebSocket.OPEN) session.ws.send(buffer);
  else session.queue.push(buffer);          // before the socket opens: nothing is lost
}

function flush(session) {
  if (!session.pending.length) return;
  let n = 0;
  for (const p of session.pending) n += p.length;
  const all = new Float32Array(n);
  let at = 0;
  for (const p of session.pending) { all.set(p, at); at += p.length; }
  session.pending = []; session.pendingSamples = 0;
  sendAudio(session, toPcm16(all));
}

function addFinal(msg) {
  const text = (msg.text || "").trim();
  if (!text) return;
  const transcript = $("transcript");
  if (transcript.childNodes.length) transcript.appendChild(document.createTextNode(" "));
  const line = document.createElement("div");
  const words = msg.result || [];
  if (words.length) line.dataset.time = clock(words[0].start) + "–" + clock(words[words.length - 1].end);
  line.textContent = text;
  transcript.appendChild(line);
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.error) { status(msg.error.message, true); return; }
  if ("partial" in msg) { $("partial").textContent = msg.partial; return; }
  if ("text" in msg) { addFinal(msg); $("partial").textContent = ""; }
}

async function start() {
  $("start").disabled = true;
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    let ctx;
    try { ctx = new AudioContext({ sampleRate: 16000 }); } catch (e) { ctx = new AudioContext(); }
    await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
    const params = new URLSearchParams({ model: $("model").value });
    if (token()) params.set("token", token());
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws?" + params);
    ws.binaryType = "arraybuffer";
    const session = { ctx, media, ws, pending: [], pendingSamples: 0, queue: [], closed: null };
    session.closed = new Promise((resolve) => { ws.onclose = resolve; });
    ws.onopen = () => {
      ws.send(JSON.stringify({ config: { sample_rate: ctx.sampleRate, model: $("model").value } }));
      for (const b of session.queue) ws.send(b);
      session.queue = [];
    };
    ws.onmessage = onMessage;
    ws.onerror = () => status("WebSocket error", true);
    const node = new AudioWorkletNode(ctx, "pcm-capture", { numberOfInputs: 1, numberOfOutputs: 1 });
    const frame = Math.round(ctx.sampleRate * FRAME_MS / 1000);
    node.port.onmessage = (e) => {
      session.pending.push(e.data); session.pendingSamples += e.data.length;
      if (session.pendingSamples >= frame) flush(session);
    };
    const source = ctx.createMediaStreamSource(media);
    const mute = ctx.createGain(); mute.gain.value = 0;   // pulls the graph without playing anything
    source.connect(node); node.connect(mute); mute.connect(ctx.destination);
    session.node = node; session.source = source;
    live = session;
    $("stop").disabled = false;
    status("listening (" + ctx.sampleRate + " Hz)");
  } catch (e) {
    status("cannot start the microphone: " + e, true);
    $("start").disabled = false;
  }
}

async function stop() {
  const session = live;
  if (!session) return;
  live = null;
  $("stop").disabled = true;
  status("finishing…");
  session.media.getTracks().forEach((t) => t.stop());
  session.source.disconnect(); session.node.port.onmessage = null;
  flush(session);
  const eof = JSON.stringify({ eof: 1 });
  if (session.ws.readyState === WebSocket.OPEN) session.ws.send(eof);
  else session.queue.push(eof);
  await Promise.race([session.closed, new Promise((r) => setTimeout(r, 15000))]);
  if (session.ws.readyState !== WebSocket.CLOSED) session.ws.close();
  await session.ctx.close();
  $("partial").textContent = "";
  $("start").disabled = false;
  if (!$("status").classList.contains("error")) status("ready");
}

// ------------------------------------------------------------------ files
async function transcribeFile(file) {
  const out = $("file-result");
  out.replaceChildren();
  status("transcribing " + file.name + "…");
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("model").value);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  form.append("timestamp_granularities[]", "word");
  try {
    const r = await fetch("/v1/audio/transcriptions", { method: "POST", body: form, headers: authHeaders() });
    const body = await r.json();
    if (!r.ok) { status(file.name + ": " + errorText(body, r.statusText), true); return; }
    const title = document.createElement("p");
    title.textContent = file.name + " (" + body.duration.toFixed(2) + " s)";
    out.appendChild(title);
    for (const s of body.segments) {
      const line = document.createElement("div");
      line.className = "segment"; line.dataset.time = clock(s.start) + "–" + clock(s.end);
      line.textContent = s.text;
      out.appendChild(line);
    }
    status("ready");
  } catch (e) { status(file.name + ": " + e, true); }
}

// ------------------------------------------------------------------ wiring
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("token").value = localStorage.getItem("w2v-token") || "";
$("token").addEventListener("change", () => { localStorage.setItem("w2v-token", token()); loadModels(); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) transcribeFile(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", () => { if ($("file").files.length) transcribeFile($("file").files[0]); });
loadModels();
