// The playground speaks to the public API only: /openapi.json for the knobs' ranges,
// /v1/models, /api/voices, /api/adapters and /api/tts/stream, whose WAV stream is played with Web Audio
// from its first chunk.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOBS = ["cfg_value", "inference_timesteps", "min_len", "max_len"];
const WAV_HEADER = 44;
let audioContext = null;
let recorded = null; // the last recording, a Blob
window.lastRun = null; // timings of the last synthesis, for people and for tests

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// The API, with the key the user typed when the service asks for one (kept for this tab only).
function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = sessionStorage.getItem("voxcpm-api-key");
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(path, { ...init, headers });
}

async function loaded(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await apiError(response));
  return response.json();
}

async function apiError(response) {
  try {
    const { error } = await response.json();
    return `${error.message}${error.field ? ` (field: ${error.field})` : ""}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function loadRanges() {
  const spec = await (await fetch("/openapi.json")).json();
  const fields = spec.components.schemas.TTSStreamForm.properties;
  for (const name of KNOBS) {
    const field = fields[name];
    const input = $(name);
    if (field.minimum !== undefined) input.min = field.minimum;
    if (field.maximum !== undefined) input.max = field.maximum;
    input.value = field.default;
    input.title = field.description || "";
  }
}

async function loadModels() {
  const { data } = await loaded("/v1/models");
  const label = (m) => `${m.id} (${m.sample_rate} Hz${m.synthetic ? ", synthetic weights: noise" : ""})`;
  $("model").replaceChildren(...data.map((m) => new Option(label(m), m.id)));
  const synthetic = data.filter((m) => m.synthetic).map((m) => m.id);
  $("synthetic-notice").hidden = !synthetic.length;
  $("synthetic-notice").textContent = synthetic.length
    ? `${synthetic.join(", ")} runs on synthetic (random) weights and speaks noise, not words. ` +
      "The real weights could not be loaded when the service started: its console says why and how to get them."
    : "";
}

// A stored voice or adapter: its description, and a Delete button where the API lets one delete it.
function storedItem(text, what, path, reload) {
  const item = document.createElement("li");
  const label = document.createElement("span");
  label.textContent = text;
  item.append(label);
  if (path) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${what}`);
    remove.onclick = async () => {
      const response = await api(path, { method: "DELETE" });
      showError(response.ok ? "" : await apiError(response));
      reload();
    };
    item.append(remove);
  }
  return item;
}

// A <select>'s options, keeping the choice where it is still offered.
function fillSelect(select, first, options) {
  const chosen = select.value;
  select.replaceChildren(new Option(first, ""), ...options);
  select.value = options.some((option) => option.value === chosen) ? chosen : "";
}

async function loadVoices() {
  const { voices } = await loaded("/api/voices");
  fillSelect($("voice"), "Default voice", voices.map((v) => new Option(v.name, v.voice_id)));
  $("voice-list").replaceChildren(...voices.map((voice) => {
    const made = voice.kind === "designed" ? `designed: “${voice.description}”` : `“${voice.text}”`;
    const text = `${voice.name} — ${voice.seconds.toFixed(1)} s — ${made}`;
    return storedItem(text, `voice ${voice.name}`, `/api/voices/${voice.voice_id}`, loadVoices);
  }));
}

async function loadAdapters() {
  const { adapters } = await loaded("/api/adapters");
  const usable = adapters.filter((a) => a.model === $("model").value);
  fillSelect($("adapter"), "None (or the saved voice's)", usable.map((a) => new Option(a.name, a.adapter_id)));
  $("adapter-list").replaceChildren(...adapters.map((adapter) => {
    const size = adapter.source === "config" ? "declared in the config" : `${(adapter.bytes / 2 ** 20).toFixed(1)} MiB`;
    const text = `${adapter.name} — ${adapter.model}, rank ${adapter.r} — ${size}`;
    const path = adapter.source === "config" ? null : `/api/adapters/${adapter.adapter_id}`;
    return storedItem(text, `adapter ${adapter.name}`, path, loadAdapters);
  }));
}

function drawWaveform(samples, fraction) {
  const canvas = $("waveform");
  const context = canvas.getContext("2d");
  const x0 = Math.floor(fraction * canvas.width) % canvas.width;
  const width = Math.max(1, Math.ceil(samples.length / 400));
  const step = Math.max(1, Math.floor(samples.length / width));
  context.fillStyle = "#10162a";
  context.fillRect(x0, 0, width, canvas.height);
  context.fillStyle = "#7fa6ff";
  for (let i = 0; i < width; i++) {
    let peak = 0;
    for (let j = i * step; j < (i + 1) * step && j < samples.length; j++) peak = Math.max(peak, Math.abs(samples[j]));
    const h = Math.max(1, peak * canvas.height);
    context.fillRect(x0 + i, (canvas.height - h) / 2, 1, h);
  }
  return width / canvas.width;
}

function wavFile(pieces, sampleRate) {
  const bytes = pieces.reduce((n, p) => n + p.byteLength, 0);
  const header = new DataView(new ArrayBuffer(WAV_HEADER));
  const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + bytes, true); text(8, "WAVE"); text(12, "fmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, sampleRate, true); header.setUint32(28, sampleRate * 2, true);
  header.setUint16(32, 2, true); header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, bytes, true);
  return new Blob([header, ...pieces], { type: "audio/wav" });
}

function requestForm() {
  const form = new FormData();
  form.append("text", $("text").value);
  form.append("model", $("model").value);
  for (const name of KNOBS) form.append(name, $(name).value);
  form.append("normalize", $("normalize").checked ? "true" : "false");
  if ($("seed").value !== "") form.append("seed", $("seed").value); // the same seed and text: the same audio
  const reference = $("reference").files[0] || recorded;
  if ($("adapter").value) form.append("adapter", $("adapter").value);
  const lexicons = requestLexicons(); // playground-text.js
  if (lexicons.length) form.append("lexicons", lexicons.join(","));
  if ($("voice").value) {
    form.append("voice_id", $("voice").value);
  } else if (reference) {
    form.append("prompt_audio", reference, "reference");
    if ($("prompt-text").value.trim()) form.append("prompt_text", $("prompt-text").value);
  }
  if ($("instructions").value.trim()) form.append("instructions", $("instructions").value);
  return form;
}

async function speak(event) {
  event.preventDefault();
  showError("");
  $("speak").disabled = true;
  $("download").setAttribute("aria-disabled", "true");
  $("status").textContent = "waiting for audio…";
  audioContext = audioContext || new AudioContext();
  await audioContext.resume();
  const started = performance.now();
  try {
    const response = await api("/api/tts/stream", { method: "POST", body: requestForm() });
    if (!response.ok) {
      showError(await apiError(response));
      $("status").textContent = "refused";
      return;
    }
    const run = await play(response, started);
    window.lastRun = run;
    $("status").textContent = "done";
    $("download").href = URL.createObjectURL(wavFile(run.pieces, run.sampleRate));
    $("download").setAttribute("aria-disabled", "false");
  } catch (error) {
    showError(`The stream broke off: ${error.message}`);
    $("status").textContent = "failed";
  } finally {
    $("speak").disabled = false;
  }
}

async function play(response, started) {
  const reader = response.body.getReader();
  let pending = new Uint8Array(0);
  let sampleRate = 0;
  let playhead = 0;
  let drawn = 0;
  const run = { pieces: [], sampleRate: 0, firstAudioMs: null, totalMs: 0, audioSeconds: 0, underruns: 0 };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(pending.length + value.length);
    joined.set(pending);
    joined.set(value, pending.length);
    let offset = 0;
    if (!sampleRate) {
      if (joined.length < WAV_HEADER) { pending = joined; continue; }
      sampleRate = new DataView(joined.buffer).getUint32(24, true);
      run.sampleRate = sampleRate;
      offset = WAV_HEADER;
    }
    const usable = offset + Math.floor((joined.length - offset) / 2) * 2;
    pending = joined.slice(usable);
    if (usable === offset) continue;
    const pcm = new Int16Array(joined.slice(offset, usable).buffer);
    const floats = Float32Array.from(pcm, (v) => v / 32768);
    const buffer = audioContext.createBuffer(1, floats.length, sampleRate);
    buffer.copyToChannel(floats, 0);
    const source = audioContext.createBufferSource();
    source.buffer = buffer;
    source.connect(audioContext.destination);
    const now = audioContext.currentTime;
    if (run.firstAudioMs === null) {
      run.firstAudioMs = performance.now() - started;
      playhead = now + 0.05;
      $("ttfa").textContent = `${run.firstAudioMs.toFixed(0)} ms`;
    } else if (playhead < now) {
      run.underruns += 1;
      playhead = now;
    }
    source.start(playhead);
    playhead += buffer.duration;
    run.pieces.push(pcm.buffer);
    run.audioSeconds += buffer.duration;
    drawn += drawWaveform(floats, drawn);
    const elapsed = (performance.now() - started) / 1000;
    $("status").textContent = "playing while it streams…";
    $("audio-seconds").textContent = `${run.audioSeconds.toFixed(2)} s`;
    $("rtf").textContent = (elapsed / run.audioSeconds).toFixed(2);
  }
  run.totalMs = performance.now() - started;
  return run;
}

async function toggleRecording() {
  const button = $("record");
  if (button.recorder) {
    button.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recorded = new Blob(parts, { type: recorder.mimeType });
      button.recorder = null;
      button.textContent = "Record a reference";
      $("record-state").textContent = `Recorded ${(recorded.size / 1024).toFixed(0)} KiB; add its transcript.`;
    };
    recorder.start();
    button.recorder = recorder;
    button.textContent = "Stop recording";
    $("record-state").textContent = "Recording…";
  } catch (error) {
    showError(`Cannot record: ${error.message}`);
  }
}

async function saveVoice(event) {
  event.preventDefault();
  const audio = $("voice-audio").files[0] || recorded;
  const description = $("voice-description").value.trim();
  if (!audio && !description) {
    showError("Choose a recording, record one, or describe the voice.");
    return;
  }
  const form = new FormData();
  form.append("name", $("voice-name").value);
  if ($("voice-text").value.trim()) form.append("text", $("voice-text").value);
  if (description) {
    form.append("description", description);
    form.append("model", $("model").value);
  } else {
    form.append("audio", audio, "voice");
  }
  const response = await api("/api/voices", { method: "POST", body: form });
  showError(response.ok ? "" : await apiError(response));
  if (response.ok) {
    const voice = await response.json();
    await loadVoices();
    $("voice").value = voice.voice_id;
  }
}

async function saveAdapter(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("adapter-name").value);
  form.append("model", $("model").value);
  form.append("weights", $("adapter-weights").files[0], "weights");
  const response = await api("/api/adapters", { method: "POST", body: form });
  showError(response.ok ? "" : await apiError(response));
  if (response.ok) {
    const adapter = await response.json();
    await loadAdapters();
    $("adapter").value = adapter.adapter_id;
  }
}

$("speak-form").addEventListener("submit", speak);
$("voice-form").addEventListener("submit", saveVoice);
$("adapter-form").addEventListener("submit", saveAdapter);
$("model").addEventListener("change", loadAdapters);
$("record").addEventListener("click", toggleRecording);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("speak-form").requestSubmit();
});
function loadAll() {
  showError("");
  return Promise.all([loadRanges(), loadModels().then(loadAdapters), loadVoices()]).catch((error) =>
    showError(`Cannot load: ${error.message}`));
}

$("api-key").value = sessionStorage.getItem("voxcpm-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("voxcpm-api-key", $("api-key").value.trim());
  loadAll();
});
loadAll();
