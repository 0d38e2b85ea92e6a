// The interactive attention page (xcam/attention_html.h): the data as JSON in
// the page, the view in plain JavaScript on canvases.
#include "xcam/attention_html.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "xcam/error.h"

namespace xcam {

namespace {

std::string base64(const std::vector<uint8_t>& bytes) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const uint32_t n = (uint32_t(bytes[i]) << 16) | (i + 1 < bytes.size() ? uint32_t(bytes[i + 1]) << 8 : 0) |
                       (i + 2 < bytes.size() ? uint32_t(bytes[i + 2]) : 0);
    out += k[(n >> 18) & 63];
    out += k[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? k[(n >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? k[n & 63] : '=';
  }
  return out;
}

// The page; @DATA@ is replaced by the JSON.
const char* kPage = R"PAGE(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>attention</title>
<style>
body{font:13px/1.3 sans-serif;margin:0;color:#222}
#bar{position:sticky;top:0;background:#fafafa;padding:8px 12px;border-bottom:1px solid #ddd;z-index:2}
#bar button{margin-right:4px}#bar button.on{font-weight:bold}
.hd{display:inline-block;margin:0 6px 0 0;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;margin:0 3px 0 2px;vertical-align:middle}
#info{margin-top:4px;color:#333;min-height:1.3em;font-family:monospace}
#headview{padding:8px 12px}
#cols{display:flex;align-items:flex-start}
.col{min-width:80px}.col .tok{text-align:right}#right .tok{text-align:left}
.tok{display:block;height:16px;line-height:16px;padding:0 4px;white-space:pre;cursor:default;border-radius:2px}
.tok.special{color:#888}.tok.active{outline:1px solid #333;background:#ffe08a}
#mtoks{padding:8px 12px;line-height:20px}
#mtoks .tok{display:inline-block;height:auto}
#grid{display:grid;gap:8px;padding:8px 12px}
.cell{font-size:11px;text-align:center}
.cell canvas{border:1px solid #ccc;cursor:pointer;display:block;margin:0 auto}
#errors{color:#b00;white-space:pre;padding:0 12px}
</style></head><body>
<div id="bar"><b id="title"></b>
 <button id="bHead" class="on">Head view</button><button id="bModel">Model view</button>
 &nbsp;Layer <select id="layer"></select> &nbsp;Heads <span id="heads"></span>
 <button id="all">all</button><button id="none">none</button>
 <div id="info">hover a token: its attention (left: as the query; right: as the key)</div></div>
<div id="errors"></div>
<div id="headview"><div id="cols"><div id="left" class="col"></div><canvas id="lines"></canvas><div id="right" class="col"></div></div></div>
<div id="modelview" hidden><div id="mtoks"></div><div id="grid"></div></div>
<script id="data" type="application/json">@DATA@</script>
<script>
(() => {
"use strict";
window.addEventListener("error", e => { document.getElementById("errors").textContent += e.message + "\n"; });
const D = JSON.parse(document.getElementById("data").textContent);
const T = D.tokens.length, H = D.heads, L = D.attention.length, ROW = 16, W = 260;
const A = D.attention.map(s => { const b = atob(s), u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return u; });
// Attention p of query i to key j (the page keeps sqrt(p) as a byte).
function p(l, h, i, j) { const q = A[l][(h * T + i) * T + j] / 255; return q * q; }
const COLOURS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf",
                 "#393b79","#637939","#8c6d31","#843c39","#7b4173","#3182bd"];
const colour = h => COLOURS[h % COLOURS.length];
const label = (l, h) => (D.labels && D.labels[l] && D.labels[l][h]) || "";
const state = {layer: 0, heads: new Set([...Array(H).keys()]), hover: null, view: "head"};
const xcam = window.xcam = {state, p, redraws: 0, drawMs: 0, ready: false};
const $ = id => document.getElementById(id);
document.title = D.title; $("title").textContent = D.title;
for (let l = 0; l < L; l++) { const o = document.createElement("option"); o.value = l; o.textContent = l; $("layer").appendChild(o); }
for (let h = 0; h < H; h++) {
  const s = document.createElement("label"); s.className = "hd"; s.title = label(0, h);
  s.innerHTML = `<input type="checkbox" checked data-h="${h}"><span class="sw" style="background:${colour(h)}"></span>${h}`;
  $("heads").appendChild(s);
}
function tokens(parent, side) {
  const out = [];
  D.tokens.forEach((t, i) => {
    const e = document.createElement("span"); e.className = "tok" + (D.special && D.special[i] ? " special" : "");
    e.textContent = t; e.dataset.i = i; e.dataset.side = side;
    e.addEventListener("mouseenter", () => { state.hover = {i, side}; draw(); });
    e.addEventListener("mouseleave", () => { state.hover = null; draw(); });
    parent.appendChild(e); out.push(e);
  });
  return out;
}
const left = tokens($("left"), "query"), right = tokens($("right"), "key");
const canvas = $("lines"), dpr = window.devicePixelRatio || 1;
canvas.width = W * dpr; canvas.height = T * ROW * dpr; canvas.style.width = W + "px"; canvas.style.height = T * ROW + "px";
const g = canvas.getContext("2d"); g.scale(dpr, dpr);
const y = i => i * ROW + ROW / 2;
function line(y0, y1, alpha, width) { g.globalAlpha = alpha; g.lineWidth = width; g.beginPath(); g.moveTo(2, y0); g.lineTo(W - 2, y1); g.stroke(); }
function strongest(l, h, k, asQuery, n) {
  const w = []; for (let j = 0; j < T; j++) w.push([asQuery ? p(l, h, k, j) : p(l, h, j, k), j]);
  return w.sort((a, b) => b[0] - a[0]).slice(0, n);
}
function draw() {
  const t0 = performance.now(), l = state.layer, heads = [...state.heads].sort((a, b) => a - b);
  g.clearRect(0, 0, W, T * ROW);
  for (const e of left.concat(right)) { e.classList.remove("active"); e.style.background = ""; }
  if (state.hover === null) {  // every query's strongest key, per head
    for (const h of heads) {
      g.strokeStyle = colour(h);
      for (let i = 0; i < T; i++) { let best = 0; for (let j = 1; j < T; j++) if (p(l, h, i, j) > p(l, h, i, best)) best = j;
        line(y(i), y(best), 0.35, 1); }
    }
    $("info").textContent = `layer ${l}: each query's strongest key per head; hover a token`;
  } else {
    const k = state.hover.i, asQuery = state.hover.side === "query";
    (asQuery ? left : right)[k].classList.add("active");
    const shade = new Float32Array(T), parts = [];
    for (const h of heads) {
      g.strokeStyle = colour(h);
      for (let j = 0; j < T; j++) {
        const w = asQuery ? p(l, h, k, j) : p(l, h, j, k);
        shade[j] = Math.max(shade[j], w);
        if (w >= 0.005) { if (asQuery) line(y(k), y(j), Math.min(1, 0.15 + w), 1 + 3 * w); else line(y(j), y(k), Math.min(1, 0.15 + w), 1 + 3 * w); }
      }
      const t = strongest(l, h, k, asQuery, 3).map(([w, j]) => `${D.tokens[j]}@${j} ${w.toFixed(3)}`).join(", ");
      parts.push(`L${l} H${h}${label(l, h) ? " (" + label(l, h) + ")" : ""}: ${t}`);
    }
    (asQuery ? right : left).forEach((e, j) => { if (shade[j] > 0.005) e.style.background = `rgba(255,150,0,${Math.min(1, shade[j])})`; });
    $("info").textContent = `${asQuery ? "query" : "key"} '${D.tokens[k]}'@${k}: ` + parts.join(" | ");
  }
  g.globalAlpha = 1; xcam.redraws++; xcam.drawMs = performance.now() - t0;
}
// Model view: every layer x head as a heat map (rows: queries, columns: keys,
// brightness sqrt(p)); hovering a token shows its row under each map.
const S = Math.min(T, 120), cells = [];
function buildGrid() {
  if (cells.length) return;
  $("grid").style.gridTemplateColumns = `repeat(${H}, auto)`;
  D.tokens.forEach((t, i) => {
    const e = document.createElement("span"); e.className = "tok"; e.textContent = t; e.dataset.i = i;
    e.addEventListener("mouseenter", () => { e.classList.add("active"); strips(i); });
    e.addEventListener("mouseleave", () => { e.classList.remove("active"); strips(null); });
    $("mtoks").appendChild(e);
  });
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
    const d = document.createElement("div"); d.className = "cell";
    const c = document.createElement("canvas"); c.width = S; c.height = S; c.style.width = c.style.height = "120px";
    const img = c.getContext("2d").createImageData(S, S);
    for (let r = 0; r < S; r++) for (let q = 0; q < S; q++) {
      const v = A[l][(h * T + Math.floor(r * T / S)) * T + Math.floor(q * T / S)], o = 4 * (r * S + q);
      img.data[o] = 255 - v * 0.2; img.data[o + 1] = 255 - v * 0.75; img.data[o + 2] = 255 - v; img.data[o + 3] = 255;
    }
    c.getContext("2d").putImageData(img, 0, 0);
    const s = document.createElement("canvas"); s.width = S; s.height = 1; s.style.width = "120px"; s.style.height = "8px";
    const cap = document.createElement("div"); cap.textContent = `L${l} H${h} ${label(l, h)}`;
    c.addEventListener("click", () => { state.layer = l; state.heads = new Set([h]); sync(); show("head"); });
    d.append(c, s, cap); $("grid").appendChild(d); cells.push({l, h, s});
  }
}
function strips(i) {
  for (const {l, h, s} of cells) {
    const x = s.getContext("2d"), img = x.createImageData(S, 1);
    for (let q = 0; q < S; q++) { const v = i === null ? 0 : A[l][(h * T + i) * T + Math.floor(q * T / S)];
      img.data[4 * q] = 255; img.data[4 * q + 1] = 255 - v * 0.6; img.data[4 * q + 2] = 255 - v; img.data[4 * q + 3] = 255; }
    x.putImageData(img, 0, 0);
  }
  xcam.redraws++;
}
function sync() {
  $("layer").value = state.layer;
  document.querySelectorAll("#heads input").forEach(b => { b.checked = state.heads.has(+b.dataset.h);
    b.parentNode.title = label(state.layer, +b.dataset.h); });
  draw();
}
function show(v) {
  state.view = v; $("headview").hidden = v !== "head"; $("modelview").hidden = v !== "model";
  $("bHead").classList.toggle("on", v === "head"); $("bModel").classList.toggle("on", v === "model");
  if (v === "model") buildGrid();
}
$("layer").addEventListener("change", e => { state.layer = +e.target.value; sync(); });
$("heads").addEventListener("change", e => { const h = +e.target.dataset.h; if (e.target.checked) state.heads.add(h); else state.heads.delete(h); draw(); });
$("all").addEventListener("click", () => { state.heads = new Set([...Array(H).keys()]); sync(); });
$("none").addEventListener("click", () => { state.heads = new Set(); sync(); });
$("bHead").addEventListener("click", () => show("head"));
$("bModel").addEventListener("click", () => show("model"));
sync();
xcam.ready = true;
})();
</script></body></html>
)PAGE";

}  // namespace

std::string attention_html(const AttentionPage& page) {
  const auto T = static_cast<int64_t>(page.tokens.size());
  XCAM_CHECK(T > 0 && page.heads > 0 && !page.layers.empty(), "attention page '{}': no tokens, heads or layers",
             page.title);
  XCAM_CHECK(page.special.empty() || static_cast<int64_t>(page.special.size()) == T,
             "attention page '{}': {} special flags for {} tokens", page.title, page.special.size(), T);
  nlohmann::json data{{"title", page.title}, {"tokens", page.tokens}, {"heads", page.heads}};
  data["special"] = page.special;
  data["labels"] = page.labels;
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < page.layers.size(); ++l) {
    const auto& a = page.layers[l];
    XCAM_CHECK(static_cast<int64_t>(a.size()) == page.heads * T * T,
               "attention page '{}': layer {} has {} values, not heads x T x T = {} x {} x {}", page.title, l,
               a.size(), page.heads, T, T);
    std::vector<uint8_t> bytes(a.size());
    for (size_t k = 0; k < a.size(); ++k)
      bytes[k] = static_cast<uint8_t>(std::lround(255.0 * std::sqrt(std::clamp(double(a[k]), 0.0, 1.0))));
    layers.push_back(base64(bytes));
  }
  data["attention"] = layers;
  // Inside <script>, "</" would end the element: escape it (JSON allows "<\/").
  std::string json = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  for (size_t at = 0; (at = json.find("</", at)) != std::string::npos; at += 3) json.replace(at, 2, "<\\/");
  std::string html = kPage;
  html.replace(html.find("@DATA@"), 6, json);
  return html;
}

}  // namespace xcam
