// The imagegate console: a page per hash route, built on the public HTTP API alone. The API key
// lives in this tab's sessionStorage and goes out as a Bearer header (no cookies).

import { chooseLanguage, language, t, translateStatic } from "./i18n.js";

const KEY = "imagegate.key";
// OpenAI's sizes and the seeds' (their 1K aliases and ratios at 1K, 2K and 4K), as WxH with their ratio.
const SIZES = [
  ["auto", "auto"], ["1024x1024", "1:1"], ["1536x1024", "3:2"], ["1024x1536", "2:3"], ["1254x1254", "1:1 · 1K"],
  ["1672x941", "16:9 · 1K"], ["941x1672", "9:16 · 1K"], ["1920x1080", "16:9"], ["1080x1920", "9:16"], ["2048x2048", "1:1 · 2K"],
  ["2048x1152", "16:9 · 2K"], ["1152x2048", "9:16 · 2K"], ["3840x2160", "16:9 · 4K"], ["2160x3840", "9:16 · 4K"],
];
const MAX_IMAGES = 16;
const main = () => document.getElementById("main");
const state = { images: [], admin: false };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function field(labelKey, control) {
  const id = control.id || `f-${labelKey.replace(/\W/g, "-")}`;
  control.id = id;
  return h("div", {}, h("label", { for: id, text: t(labelKey) }), control);
}

function message(kind, text) {
  return h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status", text });
}

export function key() {
  return sessionStorage.getItem(KEY);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${key()}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && path !== "/v1/usage") {
    sessionStorage.removeItem(KEY);
    location.hash = "#/signin";
  }
  return response;
}

async function failure(response) {
  try {
    const body = await response.json();
    const error = body.error || {};
    return { status: response.status, code: error.code || body.code, message: error.message || body.msg || response.statusText };
  } catch {
    return { status: response.status, code: "", message: response.statusText };
  }
}

function errorText(problem) {
  return problem.status === 402 ? t("error.credits", { message: problem.message }) : `${problem.status} ${problem.code || ""}: ${problem.message}`;
}

// ---------------------------------------------------------------- sign-in

function signIn() {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true });
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    const response = await api("/v1/usage");
    if (!response.ok) {
      const problem = await failure(response);
      sessionStorage.removeItem(KEY);
      out.replaceChildren(message("error", t("signin.wrong", { message: problem.message })));
      return;
    }
    location.hash = "#/playground";
  } },
    h("p", { class: "muted", text: t("signin.help") }),
    field("signin.key", input),
    h("p", {}, h("button", { type: "submit", text: t("signin.submit") })),
    out,
  );
  return [h("h1", { text: t("signin.title") }), form];
}

// ---------------------------------------------------------------- playground

function addFiles(files, redraw) {
  for (const file of files) {
    if (!file.type.startsWith("image/") || state.images.length >= MAX_IMAGES) continue;
    state.images.push({ file, url: URL.createObjectURL(file) });
  }
  redraw();
}

function thumbnails(redraw) {
  return h("ol", { class: "thumbs", "aria-label": t("play.images") }, state.images.map((image, index) =>
    h("li", { class: "thumb" },
      h("img", { src: image.url, alt: `图${index + 1}` }),
      h("div", { text: `图${index + 1}` }),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", "aria-label": `${t("play.earlier")} 图${index + 1}`, disabled: index === 0,
          onclick: () => { [state.images[index - 1], state.images[index]] = [state.images[index], state.images[index - 1]]; redraw(); }, text: "←" }),
        h("button", { type: "button", class: "secondary", "aria-label": `${t("play.later")} 图${index + 1}`, disabled: index === state.images.length - 1,
          onclick: () => { [state.images[index + 1], state.images[index]] = [state.images[index], state.images[index + 1]]; redraw(); }, text: "→" }),
        h("button", { type: "button", class: "secondary", "aria-label": `${t("play.remove")} 图${index + 1}`,
          onclick: () => { state.images.splice(index, 1); redraw(); }, text: "×" }),
      ),
    )));
}

function select(id, options, value) {
  return h("select", { id }, options.map((option) => h("option", { value: option, selected: option === value, text: option })));
}

async function playground() {
  const models = await (await api("/v1/models")).json();
  const modelSelect = select("model", (models.data || []).map((m) => m.id), "gpt-image-2");
  const prompt = h("textarea", { id: "prompt", required: true });
  const size = h("select", { id: "size" }, [...SIZES, ["custom", "…"]].map(([value, ratio]) =>
    h("option", { value, selected: value === "auto", text: value === ratio ? value : `${value} (${ratio})` })));
  const custom = h("input", { type: "text", id: "custom-size", placeholder: "1600x900" });
  const quality = select("quality", ["auto", "low", "medium", "high"], "auto");
  const count = h("input", { type: "number", id: "n", min: 1, max: 10, value: 1 });
  const format = select("format", ["png", "jpeg", "webp"], "png");
  const background = select("background", ["auto", "opaque", "transparent"], "auto");
  const urls = h("textarea", { id: "urls", rows: 2 });
  const picker = h("input", { type: "file", id: "files", accept: "image/*", multiple: true, class: "visually-hidden" });
  const list = h("div");
  const drop = h("div", { class: "drop" }, h("p", { text: t("play.drop") }), picker, h("label", { for: "files", class: "pick", text: t("play.pick") }));
  const quote = h("div", { id: "quote", "aria-live": "polite" });
  const progress = h("div", { id: "progress", "aria-live": "polite" });
  const partials = h("div", { class: "partials", id: "partials" });
  const results = h("div", { class: "results", id: "results" });
  const snippets = h("div", { id: "snippets" });
  const run = h("button", { type: "submit", id: "run", text: t("play.send") });

  const redraw = () => { list.replaceChildren(thumbnails(redraw)); requote(); };
  picker.addEventListener("change", () => addFiles(picker.files, redraw));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); drop.classList.remove("over"); addFiles(event.dataTransfer.files, redraw); });
  document.onpaste = (event) => { if (location.hash.startsWith("#/playground")) addFiles([...event.clipboardData.files], redraw); };

  const chosenSize = () => (size.value === "custom" ? custom.value.trim() : size.value);
  const imageUrls = () => urls.value.split("\n").map((line) => line.trim()).filter(Boolean);
  const isEdit = () => state.images.length > 0 || imageUrls().length > 0;

  function body(streaming) {
    const fields = { model: modelSelect.value, prompt: prompt.value, size: chosenSize(), quality: quality.value, n: count.value, output_format: format.value, background: background.value };
    if (streaming) Object.assign(fields, { stream: "true", partial_images: "2" });
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    state.images.forEach((image) => form.append("image[]", image.file, image.file.name));
    for (const url of imageUrls()) form.append("image[]", url);
    return form;
  }

  let quoting = 0;
  async function requote() {
    const mine = ++quoting;
    if (!prompt.value.trim()) { quote.replaceChildren(); return; }
    const path = `/v1/images/${isEdit() ? "edits" : "generations"}?dry_run=true`;
    const response = await api(path, { method: "POST", body: body(false) });
    if (mine !== quoting) return;
    if (!response.ok) { quote.replaceChildren(message("error", errorText(await failure(response)))); return; }
    const priced = await response.json();
    state.quote = priced;
    const words = priced.sufficient ? t("play.quote", priced) : t("play.quote.short", priced);
    quote.replaceChildren(message(priced.sufficient ? "ok" : "error", words));
  }
  for (const control of [modelSelect, size, custom, quality, count, format, background, urls]) control.addEventListener("change", requote);
  prompt.addEventListener("change", requote);

  async function send(event) {
    event.preventDefault();
    if (!prompt.value.trim()) { progress.replaceChildren(message("error", t("play.nothing"))); return; }
    run.disabled = true;
    partials.replaceChildren();
    results.replaceChildren();
    snippets.replaceChildren();
    const started = performance.now();
    let partialCount = 0;
    const tick = () => progress.replaceChildren(message("ok", t("play.running", { seconds: ((performance.now() - started) / 1000).toFixed(1), partials: partialCount })));
    tick();
    const timer = setInterval(tick, 200);
    try {
      const kind = isEdit() ? "edits" : "generations";
      const response = await api(`/v1/images/${kind}`, { method: "POST", body: body(true) });
      if (!response.ok) { progress.replaceChildren(message("error", errorText(await failure(response)))); return; }
      const engine = response.headers.get("x-imagegate-engine") || "";
      const taskId = response.headers.get("x-imagegate-task") || "";
      const made = [];
      for await (const event of serverEvents(response)) {
        if (event.type === "error") { progress.replaceChildren(message("error", errorText({ status: "", ...event.error }))); return; }
        const src = `data:image/${format.value};base64,${event.b64_json}`;
        if (event.type.endsWith("partial_image")) {
          partialCount += 1;
          partials.append(h("img", { src, alt: `partial ${partialCount}`, class: "partial" }));
        } else if (event.type.endsWith("completed")) {
          made.push(src);
        }
      }
      clearInterval(timer);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const cost = await taskCost(taskId);
      progress.replaceChildren(message("ok", t("play.done", { engine, seconds, cost })));
      results.replaceChildren(...made.map((src, index) => h("figure", {},
        h("img", { src, alt: `result ${index + 1}`, class: "result" }),
        h("figcaption", {}, h("a", { href: src, download: `imagegate-${index + 1}.${format.value === "jpeg" ? "jpg" : format.value}`, text: t("play.download") })),
      )));
      snippets.replaceChildren(...codeSnippets(kind));
      refreshBalance();
    } finally {
      clearInterval(timer);
      run.disabled = false;
    }
  }

  function codeSnippets(kind) {
    const fields = { model: modelSelect.value, prompt: prompt.value, size: chosenSize(), quality: quality.value, n: count.value };
    const files = state.images.map((image) => image.file.name);
    const head = [`curl ${location.origin}/v1/images/${kind} \\`, `  -H "Authorization: Bearer $IMAGEGATE_API_KEY" \\`];
    const curl = kind === "edits"
      ? [...head, ...Object.entries(fields).map(([name, value]) => `  -F ${JSON.stringify(`${name}=${value}`)} \\`),
        ...files.map((name) => `  -F "image[]=@${name}" \\`)].join("\n").replace(/ \\$/, "")
      : [...head, `  -H "Content-Type: application/json" \\`, `  -d '${JSON.stringify({ ...fields, n: Number(fields.n) }).replaceAll("'", "'\\''")}'`].join("\n");
    const call = kind === "edits"
      ? `client.images.edit(model=${JSON.stringify(fields.model)}, image=[${files.map((name) => `open(${JSON.stringify(name)}, "rb")`).join(", ")}],\n    prompt=${JSON.stringify(fields.prompt)}, size=${JSON.stringify(fields.size)}, n=${fields.n})`
      : `client.images.generate(model=${JSON.stringify(fields.model)}, prompt=${JSON.stringify(fields.prompt)},\n    size=${JSON.stringify(fields.size)}, n=${fields.n})`;
    const python = `from openai import OpenAI\n\nclient = OpenAI(base_url="${location.origin}/v1", api_key=IMAGEGATE_API_KEY)\nresult = ${call}`;
    return [h("h2", { text: t("play.snippets") }), h("pre", { id: "curl", text: curl }), h("pre", { id: "python", text: python })];
  }

  const form = h("form", { class: "card", onsubmit: send },
    h("div", {}, h("label", { text: t("play.images") }), drop, list),
    field("play.urls", urls),
    field("play.prompt", prompt),
    h("div", { class: "grid" }, field("play.model", modelSelect), field("play.size", size), field("play.custom", custom), field("play.quality", quality),
      field("play.n", count), field("play.format", format), field("play.background", background)),
    quote,
    h("div", { class: "row" }, run, h("span", { id: "balance", class: "muted" })),
  );
  redraw();
  refreshBalance();
  return [h("h1", { text: t("play.title") }), form, h("div", { class: "card" }, progress, partials, results, snippets)];
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = chunk.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim()).join("");
      if (data) yield JSON.parse(data);
    }
  }
}

async function taskCost(taskId) {
  const usage = await (await api("/v1/usage")).json();
  return (usage.tasks || []).find((task) => task.id === taskId)?.cost ?? "?";
}

async function refreshBalance() {
  const response = await api("/v1/usage");
  if (!response.ok) return;
  const usage = await response.json();
  const balance = document.getElementById("balance");
  if (balance) balance.textContent = `${t("usage.available")}: ${usage.available}`;
}

// ---------------------------------------------------------------- tasks

async function tasks() {
  const usage = await (await api("/v1/usage?limit=100")).json();
  if (!usage.tasks?.length) return [h("h1", { text: t("tasks.title") }), h("p", { text: t("tasks.none") })];
  const rows = usage.tasks.map((task) => h("tr", {},
    h("td", {}, task.files?.length ? h("img", { src: task.files[0], alt: "", loading: "lazy" }) : ""),
    h("td", {}, h("a", { href: `#/tasks/${task.id}`, text: task.id })),
    h("td", { class: `state-${task.state}`, text: task.state }),
    h("td", { text: task.model }),
    h("td", { text: task.kind }),
    h("td", { text: task.request?.size || "" }),
    h("td", { text: task.cost }),
    h("td", { text: new Date(task.created_at * 1000).toLocaleString(language() === "zh" ? "zh-CN" : "en") }),
  ));
  const head = h("tr", {}, ["", "ID", t("tasks.state"), t("tasks.model"), t("tasks.kind"), t("play.size"), t("tasks.cost"), t("tasks.created")].map((text) => h("th", { scope: "col", text })));
  if (usage.tasks.some((task) => task.state === "waiting" || task.state === "running")) refreshSoon();
  return [h("h1", { text: t("tasks.title") }), h("table", {}, h("thead", {}, head), h("tbody", {}, rows))];
}

async function task(id) {
  const response = await api(`/v1/images/tasks/${encodeURIComponent(id)}`);
  if (!response.ok) return [h("h1", { text: t("task.title", { id }) }), message("error", errorText(await failure(response)))];
  const body = await response.json();
  const row = await (await api(`/v1/tasks/${encodeURIComponent(id)}`)).json();
  const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString(language() === "zh" ? "zh-CN" : "en") : "");
  const took = row.finished_at && row.created_at ? `${(row.finished_at - row.created_at).toFixed(1)} s` : "";
  const request = row.request || {};
  const inputs = (request.images || []).map((item) => item.url || item.filename || item.kind).join(", ");
  const facts = [["tasks.model", row.model], ["task.engine", row.engine], ["play.prompt", request.prompt], ["play.size", request.size],
    ["task.inputs", inputs], ["tasks.cost", row.cost], ["tasks.created", when(row.created_at)], ["task.finished", when(row.finished_at)],
    ["task.took", took], ["tasks.images", row.images]];
  const parts = [h("p", {}, h("a", { href: "#/tasks", text: `← ${t("tasks.back")}` })), h("h1", { text: t("task.title", { id }) }),
    h("p", { id: "task-state", class: `state-${body.status}`, text: body.status }),
    h("dl", { class: "card facts" }, facts.map(([label, value]) => [h("dt", { text: t(label) }), h("dd", { text: String(value ?? "") })]))];
  if (body.error) parts.push(h("h2", { text: t("task.error") }), message("error", `${body.error.code}: ${body.error.message}`));
  const images = body.data?.data || [];
  if (images.length) {
    parts.push(h("h2", { text: t("task.results") }), h("div", { class: "results" }, images.map((image, index) =>
      h("img", { src: image.url || `data:image/png;base64,${image.b64_json}`, alt: `result ${index + 1}` }))));
  }
  if (row.calls?.length) parts.push(h("h2", { text: t("task.calls") }), h("pre", { text: JSON.stringify(row.calls, null, 2) }));
  if (row.deliveries?.length) {
    parts.push(h("h2", { text: t("task.deliveries") }), h("table", { id: "deliveries" },
      h("thead", {}, h("tr", {}, ["URL", t("tasks.state"), t("task.attempts"), t("task.answer")].map((text) => h("th", { scope: "col", text })))),
      h("tbody", {}, row.deliveries.map((item) => h("tr", {}, [item.url, item.state, item.attempts, item.last_status ?? item.last_error ?? ""].map((value) => h("td", { text: String(value) })))))));
  }
  if (body.status === "waiting" || body.status === "running") refreshSoon();
  return parts;
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(), 1000);
}

// ---------------------------------------------------------------- usage

async function usagePage() {
  const usage = await (await api("/v1/usage?limit=100")).json();
  const figures = h("div", { class: "figures" }, [["usage.balance", usage.balance], ["usage.held", usage.held], ["usage.available", usage.available]].map(([label, value]) =>
    h("div", { class: "figure" }, h("span", { class: "muted", text: t(label) }), h("strong", { text: value }))));
  const entries = (await (await api("/v1/ledger?limit=50")).json()).data || [];
  const ledger = h("table", { id: "ledger" },
    h("thead", {}, h("tr", {}, [t("tasks.created"), t("usage.kind"), t("usage.amount"), t("usage.heldcol"), t("usage.task"), t("usage.note")].map((text) => h("th", { scope: "col", text })))),
    h("tbody", {}, entries.map((row) => h("tr", {}, [new Date(row.created_at * 1000).toLocaleString(language() === "zh" ? "zh-CN" : "en"), row.kind, row.amount, row.held, row.task_id || "", row.note || ""].map((value) => h("td", { text: String(value ?? "") }))))));
  return [h("h1", { text: t("usage.title") }), figures, h("h2", { text: t("usage.chart") }), chart(usage.tasks || []), h("h2", { text: t("usage.ledger") }), ledger];
}

function svgText(x, y, words) {
  const text = document.createElementNS("http://www.w3.org/2000/svg", "text");
  for (const [name, value] of Object.entries({ x, y, "text-anchor": "middle", "font-size": 10 })) text.setAttribute(name, String(value));
  text.textContent = words;
  return text;
}

function chart(taskList) {
  const days = new Map();
  const models = [];
  for (const item of taskList) {
    const day = new Date(item.created_at * 1000).toISOString().slice(0, 10);
    const entry = days.get(day) || { credits: 0, images: 0, byModel: {} };
    entry.credits += Number(item.cost) || 0;
    entry.images += item.images || 0;
    entry.byModel[item.model] = (entry.byModel[item.model] || 0) + (Number(item.cost) || 0);
    if (!models.includes(item.model)) models.push(item.model);
    days.set(day, entry);
  }
  const colours = ["#2457d6", "#1e7b34", "#b35c00", "#7b2cbf", "#b3261e", "#0f7c8c"];
  const series = [...days.entries()].sort(([a], [b]) => a.localeCompare(b)).slice(-30);
  const width = 640, height = 220, pad = 30;
  const most = Math.max(1, ...series.map(([, value]) => value.credits));
  const step = series.length ? Math.min(80, (width - 2 * pad) / series.length) : 0;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", t("usage.chart"));
  series.forEach(([day, value], index) => {
    let top = height - pad;
    for (const model of models) {
      const credits = value.byModel[model] || 0;
      if (!credits) continue;
      const bar = document.createElementNS(ns, "rect");
      const barHeight = (credits / most) * (height - 2 * pad);
      top -= barHeight;
      bar.setAttribute("x", String(pad + index * step + 4));
      bar.setAttribute("y", String(top));
      bar.setAttribute("width", String(Math.max(2, step - 8)));
      bar.setAttribute("height", String(barHeight));
      bar.setAttribute("fill", colours[models.indexOf(model) % colours.length]);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${day} ${model}: ${credits} ${t("usage.credits")}`;
      bar.append(title);
      svg.append(bar);
    }
    const middle = pad + index * step + step / 2;
    svg.append(svgText(middle, top - 4, `${value.credits} · ${value.images} ${t("usage.imagesword")}`), svgText(middle, height - 10, day.slice(5)));
  });
  const legend = h("p", { class: "legend" }, models.map((model, index) => h("span", { class: "key" },
    h("span", { class: "swatch", "data-colour": String(index % colours.length) }), ` ${model} `)));
  return h("div", {}, svg, legend);
}

// ---------------------------------------------------------------- admin

async function admin() {
  const response = await api("/admin/keys");
  if (!response.ok) return [h("h1", { text: t("admin.title") }), message("error", errorText(await failure(response)))];
  const keys = (await response.json()).data || [];
  const out = h("div", { "aria-live": "polite", id: "admin-message" });
  const name = h("input", { type: "text", id: "new-name" });
  const credits = h("input", { type: "number", id: "new-credits", min: 0, value: 100 });
  const isAdmin = h("input", { type: "checkbox", id: "new-admin" });
  const create = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const made = await api("/admin/keys", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: name.value, credits: credits.value, admin: isAdmin.checked }) });
    if (!made.ok) { out.replaceChildren(message("error", errorText(await failure(made)))); return; }
    const body = await made.json();
    await route();
    document.getElementById("admin-message").replaceChildren(message("ok", t("admin.created", { key: body.key, secret: body.webhook_secret })));
  } }, h("h2", { text: t("admin.create") }), h("div", { class: "grid" }, field("admin.name", name), field("admin.credits", credits),
    h("div", {}, h("label", { for: "new-admin" }, isAdmin, " ", t("admin.isadmin")))), h("p", {}, h("button", { type: "submit", text: t("admin.create") })));
  const rows = keys.map((item) => {
    const amount = h("input", { type: "number", min: 1, value: 100, "aria-label": `${t("admin.amount")} ${item.id}`, class: "amount" });
    return h("tr", { "data-key": item.id },
      h("td", { text: item.id }), h("td", { text: item.name || "" }), h("td", { class: "balance", text: item.balance }),
      h("td", { class: "limits", text: item.limits.rpm ? `${item.limits.rpm}/min` : "" }),
      h("td", { text: item.state === "revoked" ? t("admin.revoked") : (item.admin ? "admin" : "") }),
      h("td", {}, h("div", { class: "row" }, amount,
        h("button", { type: "button", class: "secondary", text: t("admin.grant"), onclick: async () => {
          const moved = await api(`/admin/keys/${item.id}/grant`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ amount: amount.value, note: "console" }) });
          if (!moved.ok) { out.replaceChildren(message("error", errorText(await failure(moved)))); return; }
          await route();
        } }),
        h("button", { type: "button", class: "secondary", text: t("admin.deduct"), onclick: async () => {
          const moved = await api(`/admin/keys/${item.id}/deduct`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ amount: amount.value, note: "console" }) });
          if (!moved.ok) { out.replaceChildren(message("error", errorText(await failure(moved)))); return; }
          await route();
        } }),
        h("button", { type: "button", class: "secondary", text: t("admin.limits"), onclick: async () => {
          const rpm = window.prompt(t("admin.rpm"), String(item.limits.rpm ?? ""));
          if (rpm === null) return;
          const changed = await api(`/admin/keys/${item.id}`, { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ rpm: rpm === "" ? null : Number(rpm) }) });
          if (!changed.ok) { out.replaceChildren(message("error", errorText(await failure(changed)))); return; }
          await route();
        } }),
        h("button", { type: "button", class: "secondary", text: t("admin.revoke"), disabled: item.state === "revoked", onclick: async () => {
          await api(`/admin/keys/${item.id}`, { method: "DELETE" });
          await route();
        } }))),
    );
  });
  const table = h("table", { id: "keys" }, h("thead", {}, h("tr", {}, ["ID", t("admin.name"), t("usage.balance"), t("admin.rpm"), "", ""].map((text) => h("th", { scope: "col", text })))), h("tbody", {}, rows));
  const channels = (await (await api("/admin/channels")).json()).data || [];
  const across = (await (await api("/admin/usage?days=30")).json()).data || [];
  const channelRows = channels.map((item) => h("tr", {},
    h("td", { text: item.name }), h("td", { text: item.engine }), h("td", { text: Array.isArray(item.models) ? item.models.join(", ") : item.models }),
    h("td", { class: item.circuit === "closed" ? "state-success" : "state-fail", text: item.circuit }),
    h("td", { text: item.health ? `${item.health.state}${item.health.error ? `: ${item.health.error}` : ""}` : "" }),
    h("td", { text: Object.entries(item.attempts).map(([result, count]) => `${result} ${count}`).join(" · ") }),
  ));
  const channelTable = channels.length
    ? h("table", { id: "channels" }, h("thead", {}, h("tr", {}, ["", t("admin.engine"), t("tasks.model"), t("admin.circuit"), t("admin.health"), t("admin.attempts")].map((text) => h("th", { scope: "col", text })))), h("tbody", {}, channelRows))
    : h("p", { class: "muted", text: t("admin.nochannels") });
  const usageRows = across.map((item) => h("tr", {}, [item.day, item.model, item.tasks, item.succeeded, item.failed, item.images, item.credits].map((value) => h("td", { text: String(value) }))));
  const usageTable = h("table", { id: "usage-across" }, h("thead", {}, h("tr", {}, [t("admin.day"), t("tasks.model"), t("nav.tasks"), "✓", "✗", t("tasks.images"), t("tasks.cost")].map((text) => h("th", { scope: "col", text })))), h("tbody", {}, usageRows));
  return [h("h1", { text: t("admin.title") }), out, create, h("h2", { text: t("admin.keys") }), table,
    h("h2", { text: t("admin.channels") }), channelTable, h("h2", { text: t("admin.usage") }), usageTable];
}

// ---------------------------------------------------------------- routing

async function isAdmin() {
  const response = await api("/admin/keys");
  return response.ok;
}

async function route() {
  const hash = location.hash || "#/playground";
  const signedIn = Boolean(key());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn && hash !== "#/signin") { location.hash = "#/signin"; return; }
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", hash.startsWith(link.getAttribute("href")));
    if (link.hasAttribute("aria-current")) link.setAttribute("aria-current", "page");
  }
  if (signedIn) {
    state.admin = await isAdmin();
    document.getElementById("nav-admin").hidden = !state.admin;
  }
  let page;
  if (hash === "#/signin") page = signIn();
  else if (hash.startsWith("#/tasks/")) page = await task(decodeURIComponent(hash.slice(8)));
  else if (hash === "#/tasks") page = await tasks();
  else if (hash === "#/usage") page = await usagePage();
  else if (hash === "#/admin" && state.admin) page = await admin();
  else page = await playground();
  main().replaceChildren(...page);
}

function start() {
  const picker = document.getElementById("language");
  picker.value = chooseLanguage();
  translateStatic();
  picker.addEventListener("change", () => { chooseLanguage(picker.value); translateStatic(); route(); });
  document.getElementById("sign-out").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.hash = "#/signin"; route(); });
  window.addEventListener("hashchange", () => { clearTimeout(refreshTimer); route(); });
  route();
}

start();
