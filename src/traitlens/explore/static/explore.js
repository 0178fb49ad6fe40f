// traitlens explore: the page's behaviour. Plain DOM and fetch, no build step.
"use strict";

const PAGE = 48;
const state = { info: null, offset: 0, total: 0, image: null, selection: new Set(), latents: [], edits: [], hover: null };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function post(path, data) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const percent = (p) => `${(100 * p).toFixed(2)}%`;

// -- the image grid ---------------------------------------------------------------------------
async function showPage() {
  const page = await api(`/api/images?offset=${state.offset}&limit=${PAGE}`);
  state.total = page.total;
  const grid = $("grid");
  grid.replaceChildren(...page.images.map((image) => {
    const thumb = element("img", { src: `/api/images/${image.id}/thumb.png`, alt: image.source, title: image.source, "data-id": image.id });
    thumb.addEventListener("click", () => openImage(image.id, image.source));
    return thumb;
  }));
  const last = Math.min(state.offset + PAGE, state.total);
  $("page").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "no images given (--data)";
}

// -- one image ----------------------------------------------------------------------------------
async function openImage(id, title) {
  state.image = id; state.selection.clear(); state.latents = []; state.edits = []; state.hover = null;
  for (const thumb of document.querySelectorAll("#grid img")) thumb.classList.toggle("chosen", thumb.dataset.id === id);
  $("image-title").textContent = title;
  $("view").src = `/api/images/${id}/view.png`;
  $("image-panel").hidden = false; $("latent-panel").hidden = false;
  $("cam").removeAttribute("src");
  renderEdits(); renderLatents(); draw();
  const predicted = await api(`/api/images/${id}/predict`);
  renderPredictions(predicted.predictions, null);
}

function renderPredictions(before, after) {
  const afterOf = new Map((after || []).map((row) => [row.class, row.probability]));
  const rows = [...before];
  for (const row of after || []) if (!rows.some((b) => b.class === row.class)) rows.push({ class: row.class, probability: null });
  $("predictions").tBodies[0].replaceChildren(...rows.map((row) => {
    const tr = element("tr", { "data-class": row.class });
    const p = row.probability;
    tr.append(element("td", { text: row.class }),
      element("td", {}, element("span", { class: "bar", style: `width:${Math.round(100 * (p || 0))}px` }), p === null ? "" : percent(p)));
    const cell = element("td", { class: "after" }), change = element("td", { class: "change" });
    if (afterOf.has(row.class)) {
      const q = afterOf.get(row.class);
      cell.dataset.probability = String(q);
      cell.textContent = percent(q);
      if (p !== null) {
        cell.classList.add(q >= p ? "up" : "down");
        change.textContent = `${q >= p ? "+" : "−"}${(100 * Math.abs(q - p)).toFixed(2)} pp`;
        change.classList.add(q >= p ? "up" : "down");
      }
    }
    tr.append(cell, change);
    return tr;
  }));
}

// -- the patch grid -------------------------------------------------------------------------------
function patchAt(event) {
  const [gh, gw] = state.info.grid_hw;
  const box = $("overlay").getBoundingClientRect();
  const col = Math.min(gw - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * gw)));
  const row = Math.min(gh - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * gh)));
  return row * gw + col;
}

function draw() {
  const canvas = $("overlay");
  const [gh, gw] = state.info.grid_hw;
  canvas.width = 384; canvas.height = 384;
  const context = canvas.getContext("2d");
  const cw = canvas.width / gw, ch = canvas.height / gh;
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (state.hover) {
    const top = state.hover.max || 1;
    state.hover.values.forEach((value, patch) => {
      if (value <= 0) return;
      context.fillStyle = `rgba(255, 200, 0, ${0.75 * value / top})`;
      context.fillRect((patch % gw) * cw, Math.floor(patch / gw) * ch, cw, ch);
    });
  }
  context.strokeStyle = "rgba(255,255,255,0.35)";
  for (let i = 1; i < gw; i++) { context.beginPath(); context.moveTo(i * cw, 0); context.lineTo(i * cw, canvas.height); context.stroke(); }
  for (let j = 1; j < gh; j++) { context.beginPath(); context.moveTo(0, j * ch); context.lineTo(canvas.width, j * ch); context.stroke(); }
  context.strokeStyle = "#e33"; context.lineWidth = 2;
  for (const patch of state.selection) context.strokeRect((patch % gw) * cw + 1, Math.floor(patch / gw) * ch + 1, cw - 2, ch - 2);
  context.lineWidth = 1;
}

let brushing = false;
function startBrush(event) {
  if (!state.image) return;
  brushing = true;
  if (!event.shiftKey) state.selection.clear();
  state.selection.add(patchAt(event)); draw();
}
function moveBrush(event) { if (brushing) { state.selection.add(patchAt(event)); draw(); } }
async function endBrush() {
  if (!brushing) return;
  brushing = false;
  await loadLatents();
}

async function loadLatents() {
  $("selection-size").textContent = state.selection.size ? `${state.selection.size} patch${state.selection.size > 1 ? "es" : ""}` : "no patch";
  if (!state.selection.size) { state.latents = []; renderLatents(); return; }
  const found = await post(`/api/images/${state.image}/latents`, { patches: [...state.selection] });
  state.latents = found.latents;
  renderLatents();
}

// -- latents and edits -----------------------------------------------------------------------------
function renderLatents() {
  $("latents").tBodies[0].replaceChildren(...state.latents.map((latent) => {
    const tr = element("tr", { "data-latent": String(latent.latent) });
    const associations = latent.associations.map((a) => `${a.name} (${a.kind} AP ${a.ap.toFixed(2)})`).join(", ");
    const strip = element("td");
    for (let rank = 0; rank < Math.min(latent.top_images, 4); rank++) {
      strip.append(element("img", { src: `/api/latents/${latent.latent}/top/${rank}.png`, alt: `top image ${rank + 1}` }));
    }
    const op = element("select", { class: "op" },
      element("option", { value: "zero", text: "zero" }), element("option", { value: "scale", text: "scale" }),
      element("option", { value: "set", text: "set" }));
    const value = element("input", { class: "value", type: "number", step: "any", value: "0", title: "factor or value" });
    const add = element("button", { class: "add", text: "add" });
    add.addEventListener("click", () => addEdit(latent.latent, op.value, value.value));
    tr.append(element("td", { text: String(latent.latent) }), element("td", { text: latent.activation.toFixed(3) }),
      element("td", { text: associations || "—" }), strip, element("td", {}, op, value, add));
    tr.addEventListener("mouseenter", () => showLatentMap(latent.latent));
    tr.addEventListener("mouseleave", () => { state.hover = null; draw(); });
    return tr;
  }));
}

async function showLatentMap(latent) {
  state.hover = await api(`/api/images/${state.image}/latents/${latent}/map`);
  draw();
}

function addEdit(latent, op, value) {
  const text = op === "zero" ? `${latent}=zero` : op === "scale" ? `${latent}*${value}` : `${latent}=${value}`;
  state.edits = state.edits.filter((edit) => !edit.startsWith(`${latent}=`) && !edit.startsWith(`${latent}*`));
  state.edits.push(text);
  renderEdits();
}

function renderEdits() {
  $("edits").replaceChildren(...state.edits.map((edit) => element("li", { text: edit })));
  if (!state.edits.length) $("edits").append(element("li", { text: "none yet: add one from the table" }));
}

async function applyEdits() {
  $("steer-error").textContent = "";
  const scope = document.querySelector("input[name=scope]:checked").value;
  try {
    const patches = scope === "patches" ? [...state.selection] : null;
    if (patches !== null && !patches.length) throw new Error("select patches first, or edit the whole image");
    const result = await post(`/api/images/${state.image}/steer`, { edits: state.edits, patches });
    renderPredictions(result.before, result.after);
    $("command").textContent = result.command;
  } catch (error) {
    $("steer-error").textContent = error.message;
  }
}

// -- heatmaps --------------------------------------------------------------------------------------
function showCam() {
  const method = $("cam-method").value, reference = $("cam-reference").value;
  $("cam").src = `/api/images/${state.image}/cam.png?method=${encodeURIComponent(method)}&reference=${encodeURIComponent(reference)}`;
  $("cam").alt = reference ? `Finer-CAM (${method}) against ${reference}` : `${method} of the predicted class`;
}

// -- uploads ---------------------------------------------------------------------------------------
async function upload(event) {
  const file = event.target.files[0];
  $("upload-error").textContent = "";
  if (!file) return;
  try {
    const uploaded = await api("/api/upload", { method: "POST", body: file });
    await openImage(uploaded.id, file.name);
  } catch (error) {
    $("upload-error").textContent = error.message;
  }
}

async function start() {
  state.info = await api("/api/info");
  $("about").textContent = `${state.info.model} · SAE ${state.info.sae} (${state.info.width} latents) on ${state.info.layer} ` +
    `(${state.info.tokens} tokens)${state.info.features ? "" : " · no features directory: no associations"}`;
  $("cam-method").replaceChildren(...state.info.methods.map((name) => element("option", { value: name, text: name })));
  $("cam-method").value = state.info.methods.includes("grad-cam") ? "grad-cam" : state.info.methods[0];
  $("cam-reference").append(...state.info.classes.map((name) => element("option", { value: name, text: `Finer-CAM vs ${name}` })));
  const overlay = $("overlay");
  overlay.addEventListener("mousedown", startBrush);
  overlay.addEventListener("mousemove", moveBrush);
  window.addEventListener("mouseup", endBrush);
  $("clear-selection").addEventListener("click", () => { state.selection.clear(); draw(); loadLatents(); });
  $("apply").addEventListener("click", applyEdits);
  $("reset").addEventListener("click", () => { state.edits = []; renderEdits(); openImage(state.image, $("image-title").textContent); });
  $("cam-show").addEventListener("click", showCam);
  $("copy-command").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("command").textContent));
  $("upload").addEventListener("change", upload);
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); showPage(); });
  $("next").addEventListener("click", () => { if (state.offset + PAGE < state.total) { state.offset += PAGE; showPage(); } });
  await showPage();
}

start();
