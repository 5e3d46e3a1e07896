// fcnseg serve's page: upload an image, draw the returned mask over it, list the classes.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // {image, mask, maskUrl, imageUrl}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// A server started with a token (FCNSEG_TOKEN) needs it on /v1/*: taken from the address's
// fragment (http://host:8000/#token=...; a fragment never reaches the server or its logs)
// or asked for on the first 401, and kept for this tab only.
const TOKEN_KEY = "fcnseg-token";
(() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

async function api(url, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(url, { ...options, headers });
    if (r.status !== 401 || attempt > 0) return r;
    const given = window.prompt("This server needs its access token (FCNSEG_TOKEN):");
    if (!given) return r;
    sessionStorage.setItem(TOKEN_KEY, given.trim());
  }
}

function rgb(c) { return `rgb(${c[0]}, ${c[1]}, ${c[2]})`; }

async function loadModel() {
  try {
    const r = await api("/v1/model");
    const m = await r.json();
    if (!r.ok) throw new Error(m.detail || r.statusText);
    const inf = m.inference;
    const tta = inf.tta ? `TTA ${inf.tta} (${inf.tta_views} views)` : "no TTA";
    const crf = inf.crf ? `CRF ${inf.crf}` : "no CRF";
    const cost = inf.warmup_ms != null ? ` · ~${Math.round(inf.warmup_ms)} ms per ${inf.warmup_size[0]}×${inf.warmup_size[1]} image` : "";
    $("model-line").textContent =
      `${m.model}${m.backbone ? " / " + m.backbone : ""} · ${m.num_classes} classes · ${tta} · ${crf} · ${inf.device}${cost}`;
    const lim = m.limits;
    $("limits").textContent =
      `PNG, JPEG, BMP, TIFF, WebP, PPM · up to ${(lim.max_upload_bytes / 1048576).toFixed(0)} MB and ${(lim.max_image_pixels / 1e6).toFixed(1)} megapixels`;
  } catch (e) {
    $("model-line").textContent = `cannot read /v1/model: ${e.message}`;
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error("the browser cannot display this image"));
    im.src = url;
  });
}

function draw() {
  if (!current) return;
  const { image, mask } = current;
  const canvas = $("canvas");
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  if (image) ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = Number($("opacity").value) / 100;
  ctx.drawImage(mask, 0, 0);
  ctx.globalAlpha = 1;
  $("opacity-value").textContent = `${$("opacity").value}%`;
}

function fillLegend(result) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  const rows = [...result.classes].sort((a, b) => b.pixels - a.pixels || a.index - b.index);
  for (const c of rows) {
    const tr = document.createElement("tr");
    tr.className = c.pixels ? "present" : "absent";
    tr.dataset.class = c.name;
    const pct = 100 * c.fraction;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = rgb(c.color);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${pct.toFixed(2)}%`;
    fill.style.background = rgb(c.color);
    bar.append(fill);
    const cells = [sw, c.name, pct >= 0.1 || pct === 0 ? `${pct.toFixed(1)}%` : "<0.1%", bar];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      if (i === 2) td.className = "num";
      td.append(v);
      tr.append(td);
    });
    tr.title = `${c.pixels.toLocaleString()} pixels`;
    body.append(tr);
  }
}

function b64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function segment(file) {
  document.body.dataset.state = "busy";
  setStatus(`Segmenting ${file.name || "the image"}…`);
  try {
    const r = await api("/v1/segment?format=json&include_mask=true", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const result = await r.json().catch(() => ({ error: "bad_response", detail: r.statusText }));
    if (!r.ok) throw new Error(`${result.detail || result.error} (HTTP ${r.status})`);
    if (current) { URL.revokeObjectURL(current.maskUrl); URL.revokeObjectURL(current.imageUrl); }
    const maskUrl = URL.createObjectURL(b64ToBlob(result.mask_png, "image/png"));
    const imageUrl = URL.createObjectURL(file);
    const mask = await loadImage(maskUrl);
    const image = await loadImage(imageUrl).catch(() => null); // e.g. TIFF: the mask alone
    current = { image, mask, maskUrl, imageUrl };
    $("result").hidden = false;
    draw();
    fillLegend(result);
    const stem = (file.name || "image").replace(/\.[^.]+$/, "");
    $("download").href = maskUrl;
    $("download").download = `${stem}_mask.png`;
    $("caption").textContent =
      `${file.name || "image"} · ${result.width}×${result.height} · inference ${Math.round(result.inference_ms)} ms` +
      (image ? "" : " · the browser cannot show this image format: the mask alone is drawn");
    setStatus(`Present: ${result.present.join(", ") || "none"}`);
    document.body.dataset.state = "done";
  } catch (e) {
    setStatus(`${file.name || "the image"}: ${e.message}`, true);
    document.body.dataset.state = "error";
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => { if (ev.target.files[0]) segment(ev.target.files[0]); ev.target.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const f = ev.dataTransfer.files[0];
    if (f) segment(f);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
  $("opacity").addEventListener("input", draw);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
