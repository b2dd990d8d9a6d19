// Grid labelling: every decision is POSTed at once; the page asks for the next unlabelled patches
// when every tile on it has a decision. Patch ids are strings (int64 does not fit a JS number).
"use strict";
const PAGE = 24;
// the server refuses label POSTs without the token of the URL `cem label` printed
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const KEYS = { i: "informative", "1": "informative", u: "uninformative", "2": "uninformative", s: "skip", "3": "skip" };
let tiles = [];
let focus = 0;
let pending = 0;

function columns() {
  const grid = document.getElementById("grid");
  return Math.max(1, getComputedStyle(grid).gridTemplateColumns.split(" ").length);
}

function showState(state) {
  const c = state.counts;
  document.getElementById("count").textContent = `labelled ${state.labelled} / ${state.target}`;
  document.getElementById("bar-fill").style.width = `${Math.min(100, (100 * state.labelled) / Math.max(1, state.target))}%`;
  const share = state.labelled ? Math.round((100 * c.informative) / state.labelled) : 0;
  document.getElementById("balance").textContent =
    `informative ${c.informative} · uninformative ${c.uninformative} · skipped ${c.skip} · ${share}% informative`;
  document.getElementById("note").textContent = state.note;
}

function setFocus(index) {
  if (!tiles.length) return;
  focus = Math.max(0, Math.min(tiles.length - 1, index));
  tiles.forEach((t, i) => t.el.classList.toggle("focus", i === focus));
}

async function label(index, value) {
  // The tile and the focus change at once, so fast key presses land on successive tiles;
  // the next page loads when every tile has a decision and every save has been answered.
  const tile = tiles[index];
  if (!tile) return;
  const page = tiles;
  tile.label = value;
  tile.el.classList.remove("informative", "uninformative", "skip");
  tile.el.classList.add(value);
  tile.el.querySelector(".label").textContent = value;
  const next = tiles.findIndex((t, i) => i > index && !t.label);
  if (next >= 0) setFocus(next);
  pending += 1;
  const response = await fetch("/api/label", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CEM-Token": TOKEN },
    body: JSON.stringify({ patch_id: tile.id, label: value }),
  });
  pending -= 1;
  if (!response.ok) {
    tile.label = null;
    tile.el.classList.remove(value);
    document.getElementById("status").textContent = `could not save: ${(await response.json()).error}`;
    return;
  }
  showState(await response.json());
  if (page === tiles && pending === 0 && tiles.every((t) => t.label)) await loadPage();
}

function makeTile(patch, index) {
  const el = document.createElement("div");
  el.className = "tile";
  el.dataset.patchId = patch.patch_id;
  el.title = `${patch.dataset} ${patch.where}`;
  el.innerHTML = `<span class="label"></span><img alt="patch ${patch.patch_id}" src="/patch/${patch.patch_id}.png">
    <div class="buttons"><button data-l="informative">I</button><button data-l="uninformative">U</button><button data-l="skip">S</button></div>`;
  el.querySelector("img").addEventListener("click", () => { setFocus(index); label(index, "informative"); });
  el.querySelector("img").addEventListener("contextmenu", (e) => { e.preventDefault(); setFocus(index); label(index, "uninformative"); });
  el.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => { setFocus(index); label(index, b.dataset.l); }));
  return { id: patch.patch_id, el, label: null };
}

async function loadPage() {
  const response = await fetch(`/api/batch?n=${PAGE}`);
  const data = await response.json();
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  tiles = data.patches.map(makeTile);
  tiles.forEach((t) => grid.appendChild(t.el));
  showState(data);
  document.getElementById("status").textContent = tiles.length ? "" : "no unlabelled patches left";
  document.body.dataset.ready = "1";
  setFocus(0);
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.toLowerCase();
  if (KEYS[key]) label(focus, KEYS[key]);
  else if (key === "arrowright") setFocus(focus + 1);
  else if (key === "arrowleft") setFocus(focus - 1);
  else if (key === "arrowdown") setFocus(focus + columns());
  else if (key === "arrowup") setFocus(focus - columns());
  else if (key === "n") loadPage();
  else return;
  e.preventDefault();
});
document.getElementById("next").addEventListener("click", loadPage);
loadPage();
