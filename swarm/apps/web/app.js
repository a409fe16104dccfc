// The page `swarm-client serve` shows at /: a chat over /v1/chat/completions (streamed) and a
// map of the swarm from /v1/swarm, polled. Plain JavaScript, no libraries, nothing fetched from
// elsewhere (the machine may be offline). Served by swarm/apps/web_page.py.
"use strict";

const POLL_MS = 1500; // the map's refresh: a killed node shows as unreachable within a few seconds
const KEY_STORE = "swarm-api-key";
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "", // kept for this tab only
  model: "",
  conversation: [], // {role, content}: what the next request sends
  busy: null, // the AbortController of the reply being streamed
  lastRoute: [], // the route the last reply took (after any recovery), drawn on the map
};

// ---- the API, with the key when there is one

class NeedKey extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    askForKey(body.error ? body.error.message : "");
    throw new NeedKey("an API key is needed");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : response.status + " " + response.statusText);
  }
  return response;
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-error").textContent = state.key ? message : "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORE, state.key);
  $("key-form").hidden = true;
  start();
});

// ---- models: a picker when the server offers several, a label otherwise

async function loadModels() {
  const models = (await (await api("/v1/models")).json()).data.map((m) => m.id);
  state.model = models.includes(state.model) ? state.model : models[0];
  const picker = $("model-picker");
  picker.replaceChildren(...models.map((id) => new Option(id, id, false, id === state.model)));
  picker.hidden = models.length < 2;
  $("model-label").textContent = models.length < 2 ? state.model : "";
}

$("model-picker").addEventListener("change", (event) => { state.model = event.target.value; });

// ---- the swarm map

let pollTimer = null;
let polling = false; // one poll at a time, however often it is asked for

async function pollMap() {
  if (polling) return;
  polling = true;
  clearTimeout(pollTimer);
  try {
    drawMap(await (await api("/v1/swarm")).json());
    setHealth("live", "ok");
  } catch (error) {
    if (error instanceof NeedKey) return; // polling starts again with the key
    setHealth("server unreachable", "bad");
  } finally {
    polling = false;
  }
  pollTimer = setTimeout(pollMap, POLL_MS);
}

function setHealth(text, kind) {
  const badge = $("health");
  badge.textContent = text;
  badge.className = "badge " + kind;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "style") node.style.cssText = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function span(layers, start, end) {
  // a bar over layers [start, end) of the model's `layers`
  return `left:${(100 * start) / layers}%;width:${(100 * (end - start)) / layers}%`;
}

function bytes(n) {
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) return (n / size).toFixed(1) + " " + unit;
  }
  return n + " B";
}

function drawMap(data) {
  const layers = data.num_layers || 1;
  const rows = [];
  const up = data.peers.filter((p) => p.state === "up").length;
  $("map-summary").textContent = data.local
    ? `${data.model}: ${layers} layers, run in this process`
    : `${data.model || "no model"}: ${layers} layers, ${up} of ${data.peers.length} nodes up` +
      (data.complete ? "" : ", incomplete");
  $("map-problem").textContent = data.problem ? "no route: " + data.problem : "";

  // the layer ruler
  const ticks = [];
  for (let layer = 0; layer < layers; layer++) ticks.push(el("span", { class: "tick", style: span(layers, layer, layer + 1) }, String(layer)));
  rows.push(row("layers", "", el("div", { class: "track ruler" }, ...ticks)));

  // one row per node: its span along the layers; replicas are rows over the same layers
  const onRoute = new Set(data.sessions.flatMap((s) => s.route.map((h) => h.address)));
  for (const peer of data.peers) {
    const known = peer.end > peer.start;
    const bar = known
      ? el("div", { class: "bar " + peer.state.replace(" ", "-"), style: span(layers, peer.start, peer.end) }, `[${peer.start}, ${peer.end})`)
      : null;
    const answered = peer.state === "up" || peer.state === "draining";
    const facts = answered
      ? (peer.state === "draining" ? "draining · " : "") +
        `${peer.steps_per_s.toFixed(0)} steps/s · load ${peer.sessions}/${peer.max_sessions} · ` +
        `${bytes(peer.free_memory)} free · ${peer.rtt_ms.toFixed(1)} ms`
      : peer.state + (peer.error ? ": " + peer.error : "");
    const busy = peer.addresses.some((a) => onRoute.has(a));
    const node = row(peer.node_id ? peer.node_id.slice(0, 10) : "?", peer.address, el("div", { class: "track" }, bar), facts);
    node.classList.add("node", peer.state.replace(" ", "-"));
    if (busy) node.classList.add("busy");
    Object.assign(node.dataset, { nodeId: peer.node_id, address: peer.address, start: peer.start, end: peer.end, state: peer.state });
    rows.push(node);
  }
  if (data.local) rows.push(row("this process", "local", el("div", { class: "track" }, el("div", { class: "bar up", style: span(layers, 0, layers) }, `[0, ${layers})`))));

  // coverage: gaps marked
  if (data.gaps.length) {
    const gaps = data.gaps.map(([start, end]) => el("div", { class: "bar gap", style: span(layers, start, end), "data-start": start, "data-end": end }, "missing"));
    rows.push(row("gaps", "", el("div", { class: "track" }, ...gaps)));
  }

  // routes: each live session's, and the one a new session would take
  for (const session of data.sessions) rows.push(routeRow(`session ${session.id.slice(-6)}`, `${session.tokens} tokens`, session.route, layers, "session"));
  if (state.lastRoute.length) rows.push(routeRow("last reply", "", state.lastRoute, layers, "last"));
  if (data.route.length) rows.push(routeRow("next route", "", data.route, layers, "next"));
  $("map").style.setProperty("--layers", layers);
  $("map").replaceChildren(...rows, legend());
}

function legend() {
  const keys = [["up", "up"], ["draining", "draining"], ["unreachable", "unreachable"], ["gap", "no node"],
    ["session", "live session"], ["last", "last reply"], ["next", "next route"]];
  return el("div", { class: "legend" }, ...keys.map(([kind, label]) => el("span", {}, el("i", { class: "swatch " + kind }), label)));
}

function row(name, detail, track, facts = "") {
  return el("div", { class: "row" },
    el("div", { class: "who" }, el("b", {}, name), el("small", {}, detail)),
    track,
    el("div", { class: "facts" }, facts));
}

function routeRow(name, detail, hops, layers, kind) {
  const bars = hops.map((h, i) => el("div", { class: "hop " + kind, style: span(layers, h.start, h.end), title: h.address, "data-address": h.address }, `${i + 1}. ${h.address}`));
  const r = row(name, detail, el("div", { class: "track" }, ...bars));
  r.classList.add("route", kind);
  return r;
}

// ---- the chat

function addMessage(role, text) {
  const body = el("div", { class: "text" }, text);
  const message = el("div", { class: "msg " + role }, el("div", { class: "role" }, role), body);
  $("messages").append(message);
  scrollChat();
  return message;
}

function scrollChat() {
  // the chat's own box follows the reply; the page stays where the reader put it
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function setBusy(controller) {
  state.busy = controller;
  $("stop").hidden = !controller;
  $("send").disabled = !!controller;
}

async function send(question) {
  state.conversation.push({ role: "user", content: question });
  addMessage("user", question);
  const reply = addMessage("assistant", "");
  reply.dataset.done = "false";
  const text = reply.querySelector(".text");
  const controller = new AbortController();
  setBusy(controller);
  let stats = null;
  let ending = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      signal: controller.signal,
      body: JSON.stringify({
        model: state.model, messages: state.conversation, stream: true,
        max_tokens: Number($("max-tokens").value) || undefined,
        temperature: Number($("temperature").value),
      }),
    });
    for await (const event of serverSentEvents(response.body)) {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        text.textContent += choice.delta.content;
        scrollChat();
      }
      if (event.swarm) stats = event.swarm;
    }
  } catch (error) {
    ending = controller.signal.aborted ? "stopped" : "error: " + error.message;
  }
  state.conversation.push({ role: "assistant", content: text.textContent });
  if (stats) state.lastRoute = stats.route;
  reply.append(el("div", { class: "stats" + (ending.startsWith("error") ? " error" : "") }, statsLine(stats, ending)));
  reply.dataset.done = "true";
  setBusy(null);
  pollMap();
}

function statsLine(stats, ending) {
  const parts = ending ? [ending] : [];
  if (stats) {
    parts.push(`first token ${stats.ttft_ms.toFixed(0)} ms`, `${stats.tokens_per_s.toFixed(1)} tokens/s`);
    if (stats.route.length) parts.push("route " + stats.route.map((h) => `${h.address} [${h.start}, ${h.end})`).join(" → "));
    if (stats.recoveries) parts.push(`${stats.recoveries} recover${stats.recoveries > 1 ? "ies" : "y"}`);
  }
  return parts.join(" · ");
}

async function* serverSentEvents(body) {
  // the response body as parsed `data:` events, until [DONE]
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("prompt").value.trim();
  if (!question || state.busy) return;
  $("prompt").value = "";
  send(question);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});

$("stop").addEventListener("click", () => state.busy && state.busy.abort()); // the server ends the generation
$("reset").addEventListener("click", () => {
  if (state.busy) state.busy.abort();
  state.conversation = [];
  $("messages").replaceChildren();
});

// ---- start

async function start() {
  try {
    await loadModels();
  } catch (error) {
    if (!(error instanceof NeedKey)) {
      setHealth("server unreachable", "bad");
      setTimeout(start, POLL_MS);
    }
    return;
  }
  pollMap();
}

start();
