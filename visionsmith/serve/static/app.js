// The visionsmith serve page: pick a model, drop or choose images, see top-k bars (classification),
// the returned class mask drawn over the image with a legend (segmentation), boxes drawn on it
// (detection), or the restored image over the upload with a before/after slider (enhancement), and the latency;
// for a generation model, a class picker and a button that draws fresh samples.
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
  const gen = Boolean(m && m.output === "generated images");  // draws images: no upload
  $("drop").hidden = gen;
  $("gen").hidden = !gen;
  if (gen) {
    const opts = m.conditional ? [new Option("every class in turn", ""), ...m.classes.map((c, i) => new Option(c, i))] : [new Option("(unconditional)", "")];
    $("gen-class").replaceChildren(...opts);
    $("gen-class").disabled = !m.conditional;
    $("model-info").textContent = `${m.task}: ${m.method}${m.conditional ? ", class-conditional" : ""}, ${m.in_chans}×${m.image_size}×${m.image_size}` +
      (m.steps ? `, DDIM ${m.steps} steps` : "") + (m.guidance ? `, guidance ${m.guidance}` : "");
    $("topk").closest("label").hidden = true;
    return;
  }
  const image = m && m.output === "image";  // an enhancement model: any size in, an image out
  $("model-info").textContent = !m ? "" : image
    ? `${m.task}: ${m.degradation === "sr" ? "super-resolution ×" + m.scale : "denoising"}, ${m.in_chans} channel${m.in_chans > 1 ? "s" : ""}, any image size`
    : `${m.task}, ${m.classes.length} classes, input ${m.in_chans}×${m.image_size}×${m.image_size}`;
  $("topk").closest("label").hidden = Boolean(m && (m.palette || image));  // masks and images have no top-k
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

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function loaded(img) {
  return img.complete && img.naturalWidth ? Promise.resolve(true)
    : new Promise((ok) => { img.addEventListener("load", () => ok(true)); img.addEventListener("error", () => ok(false)); });
}

// A segmentation answer: the mask (a palette PNG, pixel colour = class colour) blended at 50% over the
// uploaded image on a canvas, the background class left as it is, and a legend of the classes found.
async function showMask(node, pred, model) {
  const img = node.querySelector("img");
  const shown = await loaded(img);  // false when the browser cannot draw the upload (the server could)
  const mask = new Image();
  mask.src = "data:image/png;base64," + pred.mask.png_base64;
  await mask.decode();
  const scale = Math.min(1, 512 / Math.max(pred.width, pred.height));
  const w = Math.max(1, Math.round(pred.width * scale)), h = Math.max(1, Math.round(pred.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "overlay";
  const fit = 256 / Math.max(w, h);  // shown at most 256 px on its longer side, small images enlarged
  canvas.style.width = Math.round(w * fit) + "px"; canvas.style.height = Math.round(h * fit) + "px";
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;  // class colours are never blended with each other
  ctx.drawImage(mask, 0, 0, w, h);
  const m = ctx.getImageData(0, 0, w, h).data;
  ctx.clearRect(0, 0, w, h);
  ctx.imageSmoothingEnabled = true;
  if (shown) ctx.drawImage(img, 0, 0, w, h);
  const out = ctx.getImageData(0, 0, w, h);
  const px = out.data;
  const bg = model && pred.background != null ? rgb(model.palette[pred.background]) : null;
  for (let i = 0; i < px.length; i += 4) {
    if (bg && m[i] === bg[0] && m[i + 1] === bg[1] && m[i + 2] === bg[2]) continue;
    const a = shown ? 0.5 : 1;
    px[i] = px[i] * (1 - a) + m[i] * a; px[i + 1] = px[i + 1] * (1 - a) + m[i + 1] * a;
    px[i + 2] = px[i + 2] * (1 - a) + m[i + 2] * a; px[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  img.hidden = true;
  img.after(canvas);
  const ul = node.querySelector(".legend");
  ul.hidden = false;
  ul.replaceChildren(...pred.classes.map((c) => {
    const li = document.createElement("li");
    const sw = document.createElement("span"); sw.className = "swatch";
    if (c.index === pred.background) sw.classList.add("background"); else sw.style.background = c.color;  // CSSOM: allowed by the CSP
    const label = document.createElement("span"); label.className = "label";
    label.textContent = c["class"] + (c.index === pred.background ? " (not coloured)" : "");
    const pct = document.createElement("span"); pct.className = "pct";
    pct.textContent = c.fraction >= 0.0005 ? (100 * c.fraction).toFixed(1) + "%" : "<0.1%";
    li.append(sw, label, pct);
    return li;
  }));
  node.classList.add("segmentation");
}

// A detection answer: the upload on a canvas with each detection scoring >= 0.3 as a labelled box in its
// class colour, and a legend counting the objects found per class.
async function showBoxes(node, pred) {
  const img = node.querySelector("img");
  const shown = await loaded(img);
  const scale = Math.min(1, 512 / Math.max(pred.width, pred.height));
  const w = Math.max(1, Math.round(pred.width * scale)), h = Math.max(1, Math.round(pred.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "overlay";
  const fit = 256 / Math.max(w, h);
  canvas.style.width = Math.round(w * fit) + "px"; canvas.style.height = Math.round(h * fit) + "px";
  const ctx = canvas.getContext("2d");
  if (shown) ctx.drawImage(img, 0, 0, w, h); else { ctx.fillStyle = "#ddd"; ctx.fillRect(0, 0, w, h); }
  const dets = pred.detections.filter((d) => d.score >= 0.3);
  const font = Math.max(9, Math.round(12 / fit));  // about 12 px on screen whatever the canvas scale
  ctx.font = `${font}px sans-serif`; ctx.lineWidth = Math.max(1, 2 / fit); ctx.textBaseline = "top";
  for (const d of dets.slice().reverse()) {  // best drawn last, on top
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    const col = pred.colors[d["class"]] || "#e6194b";
    ctx.strokeStyle = col; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const tag = `${d["class"]} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(tag).width + 4, ty = y1 - font - 2 >= 0 ? y1 - font - 2 : y1;
    ctx.fillStyle = col; ctx.fillRect(x1, ty, tw, font + 2);
    ctx.fillStyle = "#000"; ctx.fillText(tag, x1 + 2, ty + 1);
  }
  img.hidden = true;
  img.after(canvas);
  const counts = {};
  for (const d of dets) counts[d["class"]] = (counts[d["class"]] || 0) + 1;
  const ul = node.querySelector(".legend");
  ul.hidden = false;
  ul.replaceChildren(...Object.entries(counts).map(([c, k]) => {
    const li = document.createElement("li");
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = pred.colors[c];
    const label = document.createElement("span"); label.className = "label"; label.textContent = c;
    const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = `× ${k}`;
    li.append(sw, label, pct);
    return li;
  }));
  if (!dets.length) ul.replaceChildren(Object.assign(document.createElement("li"), { textContent: "no object scored ≥ 0.3" }));
  node.classList.add("segmentation");  // the same card layout as a mask
  return dets.length ? dets[0]["class"] : "";
}

// An enhancement answer: the restored image laid exactly over the upload; the slider moves the boundary
// (left of it: the upload as sent, right of it: restored). Super-resolution answers are larger: both are
// shown at the same display size, so the slider compares the same place.
async function showSlider(node, pred) {
  const before = node.querySelector("img");
  await loaded(before);
  const after = new Image();
  after.src = "data:image/png;base64," + pred.image.png_base64;
  after.alt = "restored " + pred.filename;
  after.className = "after";
  await after.decode();
  const wrap = document.createElement("div");
  wrap.className = "compare";
  const range = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 100, value: 50 });
  range.className = "slider";
  range.setAttribute("aria-label", "before / after");
  const set = () => { after.style.clipPath = `inset(0 0 0 ${range.value}%)`; };
  range.addEventListener("input", set);
  set();
  before.replaceWith(wrap);
  before.className = "before";
  wrap.append(before, after, range);
  const ul = node.querySelector(".legend");
  ul.hidden = false;
  ul.classList.add("notes");  // plain lines, not the swatch grid of a class legend
  const lines = [`${pred.size_in[0]}×${pred.size_in[1]} → ${pred.image.width}×${pred.image.height}`,
                 "left of the slider: as sent · right: restored", ...pred.notes];
  ul.replaceChildren(...lines.map((t) => Object.assign(document.createElement("li"), { textContent: t })));
  node.classList.add("segmentation");
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
  const pred = out.predictions[0];
  if (pred.image) {  // a restored image (enhancement): before/after slider
    await showSlider(node, pred);
    node.dataset.top = "restored";
  } else if (pred.detections) {  // boxes (detection): drawn over the image, a legend of the classes found
    node.dataset.top = await showBoxes(node, pred);
  } else if (pred.mask) {  // a class mask (segmentation): overlay and legend instead of bars
    await showMask(node, pred, models.find((x) => x.name === out.model));
    node.dataset.top = pred.classes.length ? pred.classes[0]["class"] : "";
  } else {
    showBars(node, pred);
    node.dataset.top = pred.topk[0]["class"];
  }
  node.querySelector(".latency").textContent = `server ${out.latency_ms.toFixed(1)} ms · round trip ${rtt.toFixed(1)} ms · model ${out.model}`;
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

async function generate() {
  const name = $("model").value;
  const seed = Math.floor(Math.random() * 2 ** 31);
  const body = { n: 8, seed };
  if ($("gen-class").value !== "") body["class"] = Number($("gen-class").value);
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.querySelector("img").remove();
  node.querySelector(".name").textContent = `${name} · seed ${seed}` + ("class" in body ? ` · ${$("gen-class").selectedOptions[0].text}` : "");
  $("results").prepend(node);
  setStatus("drawing…");
  const t0 = performance.now();
  const resp = await fetch(`/v1/models/${encodeURIComponent(name)}:generate`, {
    method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body) });
  if (resp.status === 401) needToken();
  if (!resp.ok) {
    node.classList.add("error");
    const text = `${resp.status}: ${await errorText(resp)}`;
    node.querySelector(".latency").textContent = text;
    setStatus(text, true);
    return;
  }
  const out = await resp.json();
  const grid = document.createElement("div");
  grid.className = "samples";
  grid.replaceChildren(...out.images.map((im) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + im.png_base64;
    img.alt = im["class"] || "sample";
    fig.append(img);
    if (im["class"]) fig.append(Object.assign(document.createElement("figcaption"), { textContent: im["class"] }));
    return fig;
  }));
  node.querySelector(".bars").replaceWith(grid);
  node.querySelector(".latency").textContent = `${out.images.length} images in ${out.seconds.toFixed(2)} s on the server · round trip ${(performance.now() - t0).toFixed(0)} ms`;
  setStatus(`${out.images.length} drawn`);
}

function setUp() {
  $("gen-go").addEventListener("click", generate);
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
