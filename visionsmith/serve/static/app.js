// The visionsmith serve page: pick a model, drop or choose images, see top-k bars and latency.
// Plain JavaScript, no libraries, nothing loaded from other hosts (the page's CSP forbids it).
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];

function token() { return sessionStorage.getItem("vs-token") || ""; }

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = "status" + (isError ? " error" : "");
}

async function errorText(resp) {
  try { const j = await resp.json(); return j.detail || JSON.stringify(j); }
  catch (e) { return resp.status + " " + resp.statusText; }
}

function needToken() {
  $("token-row").hidden = false;
  $("token").focus();
  setStatus("this server needs a token: type it above (it is kept in this tab only)", true);
}

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: authHeaders() });
  if (resp.status === 401) { needToken(); return; }
  if (!resp.ok) { setStatus("cannot list models: " + await errorText(resp), true); return; }
  models = (await resp.json()).models;
  const sel = $("model");
  sel.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.kind})`, m.name)));
  showModelInfo();
  setStatus(models.length ? "ready" : "the server has no models", !models.length);
}

function showModelInfo() {
  const m = models.find((x) => x.name === $("model").value);
  $("model-info").textContent = m ? `${m.task}, ${m.classes.length} classes, input ${m.in_chans}×${m.image_size}×${m.image_size}` : "";
}

function card(file) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const img = node.querySelector("img");
  img.addEventListener("error", () => img.classList.add("broken"));
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  node.querySelector(".name").textContent = file.name;
  $("results").prepend(node);
  return node;
}

function showBars(node, pred) {
  const ol = node.querySelector(".bars");
  ol.replaceChildren(...pred.topk.map((t) => {
    const li = document.createElement("li");
    li.className = "bar";
    const label = document.createElement("span"); label.className = "label"; label.textContent = t["class"];
    const track = document.createElement("span"); track.className = "track";
    const fill = document.createElement("span"); fill.className = "fill";
    fill.style.width = (100 * t.prob).toFixed(1) + "%";  // CSSOM: allowed by the page's CSP
    track.append(fill);
    const prob = document.createElement("span"); prob.className = "prob"; prob.textContent = (100 * t.prob).toFixed(1) + "%";
    li.append(label, track, prob);
    return li;
  }));
}

async function predictOne(file) {
  const node = card(file);
  const body = new FormData();
  body.append("file", file, file.name);
  const url = `/v1/models/${encodeURIComponent($("model").value)}:predict?topk=${$("topk").value}`;
  const t0 = performance.now();
  let resp;
  try {
    resp = await fetch(url, { method: "POST", body, headers: authHeaders() });
  } catch (e) {
    node.classList.add("error");
    node.querySelector(".latency").textContent = "network error: " + e;
    return false;
  }
  const rtt = performance.now() - t0;
  if (resp.status === 401) needToken();
  if (!resp.ok) {
    node.classList.add("error");
    node.querySelector(".latency").textContent = `${resp.status}: ${await errorText(resp)}`;
    return false;
  }
  const out = await resp.json();
  showBars(node, out.predictions[0]);
  node.querySelector(".latency").textContent = `server ${out.latency_ms.toFixed(1)} ms · round trip ${rtt.toFixed(1)} ms · model ${out.model}`;
  node.dataset.top = out.predictions[0].topk[0]["class"];
  return true;
}

async function predictFiles(files) {
  files = [...files];
  if (!files.length) return;
  if (!$("model").value) { setStatus("no model to ask: the model list did not load", true); return; }
  setStatus(`sending ${files.length} image${files.length > 1 ? "s" : ""}…`);
  const ok = await Promise.all(files.map(predictOne));  // concurrent: the server batches them
  const bad = ok.filter((x) => !x).length;
  setStatus(bad ? `${files.length - bad} answered, ${bad} refused (see the cards)` : `${files.length} answered`, bad > 0);
}

function setUp() {
  $("model").addEventListener("change", showModelInfo);
  $("file").addEventListener("change", (e) => { predictFiles(e.target.files); e.target.value = ""; });
  $("token").addEventListener("change", (e) => { sessionStorage.setItem("vs-token", e.target.value); loadModels(); });
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => predictFiles(e.dataTransfer.files));
  loadModels();
}

document.addEventListener("DOMContentLoaded", setUp);
