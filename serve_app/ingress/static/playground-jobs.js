// The playground's jobs: a document submitted to /api/jobs with the voice, model and settings chosen above, the
// caller's jobs listed with their progress (polled while any is unfinished), a finished one downloaded, an
// unfinished one cancelled, a finished one deleted. Uses playground.js's api(), loaded(), apiError(), showError().
"use strict";

const JOB_POLL_MS = 1000;
const UNFINISHED = ["queued", "running"];
let jobPoll = null;

function jobBody(text) {
  const defaults = {};
  for (const name of KNOBS) if ($(name).value !== "") defaults[name] = Number($(name).value);
  if ($("seed").value !== "") defaults.seed = Number($("seed").value);
  if ($("voice").value) defaults.voice_id = $("voice").value;
  if ($("adapter").value) defaults.adapter = $("adapter").value;
  if ($("instructions").value.trim()) defaults.instructions = $("instructions").value;
  return { document: text, defaults, model: $("model").value, format: $("job-format").value };
}

async function submitJob(event) {
  event.preventDefault();
  const file = $("job-file").files[0];
  const text = file ? await file.text() : $("job-document").value;
  if (!text.trim()) {
    showError("Write a document, or choose a text file.");
    return;
  }
  const response = await api("/api/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(jobBody(text)),
  });
  showError(response.ok ? "" : await apiError(response));
  await loadJobs();
}

// A finished job's audio (a document's one file; else the ZIP), fetched with the key, saved by the browser.
async function downloadJob(job) {
  const path = job.kind === "document" && job.status === "succeeded" ? "audio" : "result";
  const response = await api(`/api/jobs/${job.job_id}/${path}`);
  if (!response.ok) {
    showError(await apiError(response));
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = path === "audio" ? `job-${job.job_id}.${job.format}` : `job-${job.job_id}.zip`;
  link.click();
}

function jobButton(text, label, onclick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.onclick = onclick;
  return button;
}

function jobItem(job) {
  const item = document.createElement("li");
  const label = document.createElement("span");
  const finished = job.items_done + job.items_failed;
  const eta = job.eta_s !== null && UNFINISHED.includes(job.status) ? `, about ${Math.round(job.eta_s)} s left` : "";
  const unit = job.kind === "document" ? "chunks" : "items";
  label.textContent = `${job.kind} ${job.job_id.slice(0, 8)} — ${job.status} — ${finished}/${job.items_total} ${unit}, ` +
    `${job.audio_seconds.toFixed(1)} s of audio${eta}`;
  const progress = document.createElement("progress");
  progress.max = job.items_total;
  progress.value = finished;
  progress.setAttribute("aria-label", `Progress of job ${job.job_id}`);
  item.append(label, progress);
  if (!UNFINISHED.includes(job.status)) {
    item.append(jobButton("Download", `Download job ${job.job_id}`, () => downloadJob(job)));
  }
  const remove = UNFINISHED.includes(job.status) ? "Cancel" : "Delete";
  item.append(jobButton(remove, `${remove} job ${job.job_id}`, async () => {
    const response = await api(`/api/jobs/${job.job_id}`, { method: "DELETE" });
    showError(response.ok ? "" : await apiError(response));
    await loadJobs();
  }));
  return item;
}

async function loadJobs() {
  clearTimeout(jobPoll);
  const { jobs } = await loaded("/api/jobs");
  $("job-list").replaceChildren(...jobs.slice().reverse().map(jobItem)); // newest first
  $("job-list").dataset.loaded = "true"; // for people's scripts and the tests: the list is the service's
  if (jobs.some((job) => UNFINISHED.includes(job.status))) jobPoll = setTimeout(loadJobs, JOB_POLL_MS);
}

$("job-form").addEventListener("submit", submitJob);
$("api-key").addEventListener("change", loadJobs);
loadJobs().catch((error) => showError(`Cannot load jobs: ${error.message}`));
