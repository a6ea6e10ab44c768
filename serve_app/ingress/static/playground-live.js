// Live mode: what is typed goes to WebSocket /api/tts/ws as it is typed, and each sentence is
// played as soon as it is spoken. Uses playground.js's helpers ($, showError, drawWaveform, wavFile).
"use strict";

const live = { socket: null, sent: "", context: 0, sources: [], playhead: 0, drawn: 0 };
window.liveRun = null; // what the last live session heard, for people and for tests

function liveUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/tts/ws`;
}

function liveInit() {
  const init = { type: "init", model: $("model").value, max_wait_ms: 600 };
  for (const name of KNOBS) if ($(name).value) init[name] = Number($(name).value);
  if ($("seed").value !== "") init.seed = Number($("seed").value);
  if ($("voice").value) init.voice_id = $("voice").value;
  if ($("adapter").value) init.adapter = $("adapter").value;
  return init;
}

async function startLive() {
  showError("");
  audioContext = audioContext || new AudioContext();
  await audioContext.resume();
  const key = sessionStorage.getItem("voxcpm-api-key");
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol, beside `voxcpm`, which
  // the server answers with, so the key is never echoed back in Sec-WebSocket-Protocol (where proxies log it).
  const socket = new WebSocket(liveUrl(), key ? ["voxcpm", `bearer.${key}`] : []);
  socket.binaryType = "arraybuffer";
  Object.assign(live, { socket, sent: "", context: live.context + 1, playhead: 0, drawn: 0 });
  window.liveRun = { segments: [], samples: 0, pieces: [], firstAudioMs: null, cancelled: 0, afterCancel: 0, done: false };
  socket.onopen = () => socket.send(JSON.stringify(liveInit()));
  socket.onmessage = (message) => onLiveMessage(message.data);
  socket.onclose = (event) => {
    if (live.socket === socket) stopLive();
    if (event.code >= 4000) showError(`Live mode closed: ${event.reason || event.code}`);
  };
  socket.onerror = () => showError("Live mode could not connect (is the API key right?)");
  $("live").textContent = "End live";
  $("interrupt").disabled = false;
  $("status").textContent = "live: type, and each sentence is spoken as you finish it";
}

function sendTyped() {
  const { socket } = live;
  if (!socket || socket.readyState !== WebSocket.OPEN || !window.liveRun.ready) return;
  const text = $("text").value;
  if (text.startsWith(live.sent)) {
    if (text.length > live.sent.length) send({ type: "text", context_id: String(live.context), text: text.slice(live.sent.length) });
  } else {
    interrupt(); // an edit of what was already sent: start over with the new text
    if (text) send({ type: "text", context_id: String(live.context), text });
  }
  live.sent = text;
}

function send(message) {
  live.socket.send(JSON.stringify(message));
}

function interrupt() {
  send({ type: "cancel", context_id: String(live.context) });
  live.context += 1;
  for (const source of live.sources) source.stop();
  live.sources = [];
  live.playhead = 0;
}

function onLiveMessage(data) {
  const run = window.liveRun;
  if (data instanceof ArrayBuffer) {
    if (run.cancelled && run.lastSegmentContext !== String(live.context)) run.afterCancel += 1;
    playPcm(new Int16Array(data), run);
    return;
  }
  const event = JSON.parse(data);
  if (event.type === "ready") {
    run.ready = true;
    run.sampleRate = event.sample_rate;
    sendTyped();
  } else if (event.type === "segment") {
    run.segments.push(event.text);
    run.lastSegmentContext = event.context_id;
  } else if (event.type === "cancelled") {
    run.cancelled += 1;
  } else if (event.type === "done") {
    run.done = true;
    $("status").textContent = "done";
    $("download").href = URL.createObjectURL(wavFile(run.pieces, run.sampleRate));
    $("download").setAttribute("aria-disabled", "false");
    live.socket.close(1000);
  } else if (event.type === "error") {
    showError(`${event.message}${event.field ? ` (field: ${event.field})` : ""}`);
  }
}

function playPcm(pcm, run) {
  const floats = Float32Array.from(pcm, (v) => v / 32768);
  const buffer = audioContext.createBuffer(1, floats.length, run.sampleRate);
  buffer.copyToChannel(floats, 0);
  const source = audioContext.createBufferSource();
  source.buffer = buffer;
  source.connect(audioContext.destination);
  const now = audioContext.currentTime;
  if (run.firstAudioMs === null) run.firstAudioMs = performance.now();
  live.playhead = Math.max(live.playhead, now + 0.05);
  source.start(live.playhead);
  live.playhead += buffer.duration;
  live.sources.push(source);
  source.onended = () => { live.sources = live.sources.filter((s) => s !== source); };
  run.samples += pcm.length;
  run.pieces.push(pcm.buffer);
  live.drawn += drawWaveform(floats, live.drawn);
  $("audio-seconds").textContent = `${(run.samples / run.sampleRate).toFixed(2)} s`;
}

function stopLive() {
  live.socket = null;
  $("live").textContent = "Go live";
  $("interrupt").disabled = true;
}

$("live").addEventListener("click", () => {
  if (!live.socket) {
    startLive();
  } else if (live.socket.readyState === WebSocket.OPEN) {
    send({ type: "end", context_id: String(live.context) }); // speak the rest, then `done` closes
    $("live").disabled = true;
    setTimeout(() => { $("live").disabled = false; }, 500);
  }
});
$("interrupt").addEventListener("click", () => live.socket && interrupt());
$("text").addEventListener("input", sendTyped);
