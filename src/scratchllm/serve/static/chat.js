// scratchllm's chat page. Talks to the server's OpenAI-compatible routes:
//   GET  /v1/models                          the model picker
//   POST /v1/chat/completions (stream: true) answers, read as server-sent events while they arrive
//   POST /feedback/rating, /feedback/pair    judgments, appended by the server to its feedback files
// The conversation lives here (the server keeps no state): each request sends the whole of it.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log");
let history = [];          // the turns so far: {role: "user" | "assistant", content}
let running = [];          // AbortControllers of the answers being streamed

function status(text) { $("status").textContent = text; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return "HTTP " + resp.status;
}

async function loadModels() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) { status("models: " + await errorText(resp)); return; }
    const body = await resp.json();
    const select = $("model");
    select.textContent = "";
    for (const m of body.data) {
      const option = document.createElement("option");
      option.value = option.textContent = m.id;
      select.appendChild(option);
    }
    status(body.data.length + (body.data.length === 1 ? " model" : " models"));
  } catch (e) {
    status("cannot reach the server: " + e.message);
  }
}

function conversation(userText) {
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }] : [];
  return messages.concat(history, [{ role: "user", content: userText }]);
}

function settings() {
  const body = {};
  const t = parseFloat($("temperature").value), p = parseFloat($("top-p").value);
  const n = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(t)) body.temperature = t;
  if (!Number.isNaN(p)) body.top_p = p;
  if (!Number.isNaN(n)) body.max_tokens = n;
  return body;
}

function turn(role, text, parent) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.textContent = text;
  (parent || log).appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

// Stream one answer into `div`; resolves to its text. The div's data-state is streaming, then done,
// stopped or error; data-chunks counts the pieces of text as they arrived.
async function streamAnswer(model, messages, div) {
  const controller = new AbortController();
  running.push(controller);
  div.classList.add("answer");
  div.dataset.state = "streaming";
  div.dataset.chunks = "0";
  let text = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify(Object.assign({ model: model, messages: messages, stream: true }, settings())),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", done = false;
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {   // one server-sent event
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") { done = true; break; }
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "the server stopped the answer");
          const choice = chunk.choices && chunk.choices[0];
          const piece = choice && choice.delta && choice.delta.content;
          if (piece) {
            text += piece;
            div.textContent = text;
            div.dataset.chunks = String(parseInt(div.dataset.chunks, 10) + 1);
            log.scrollTop = log.scrollHeight;
          }
          if (choice && choice.finish_reason) div.dataset.finish = choice.finish_reason;
        }
      }
    }
    div.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      div.dataset.state = "stopped";
    } else {
      div.dataset.state = "error";
      div.classList.add("error");
      div.textContent = text + (text ? "\n" : "") + "[error: " + e.message + "]";
    }
  } finally {
    running = running.filter((c) => c !== controller);
  }
  return text;
}

async function postFeedback(kind, body) {
  const resp = await fetch("/feedback/" + kind, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}

function rateButtons(div, model, messages, answer) {
  const row = document.createElement("div");
  row.className = "rate";
  for (const [rating, label] of [["up", "\u25B2 good"], ["down", "\u25BC bad"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "rate-" + rating;
    b.textContent = label;
    b.onclick = async () => {
      try {
        await postFeedback("rating", { model: model, messages: messages, answer: answer, rating: rating });
        row.querySelectorAll("button").forEach((x) => x.classList.remove("picked"));
        b.classList.add("picked");
        div.dataset.rated = rating;
        status("rating saved");
      } catch (e) { status("rating not saved: " + e.message); }
    };
    row.appendChild(b);
  }
  div.after(row);
}

function pickButtons(pair, divs, model, messages, answers, historyIndex) {
  divs.forEach((div, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "pick";
    b.textContent = "This one is better";
    b.onclick = async () => {
      try {
        await postFeedback("pair", { model: model, messages: messages, chosen: answers[i], rejected: answers[1 - i] });
        divs[i].classList.add("chosen");
        divs[1 - i].classList.add("rejected");
        pair.dataset.picked = String(i);
        pair.querySelectorAll("button.pick").forEach((x) => { x.disabled = true; });
        history[historyIndex] = { role: "assistant", content: answers[i] };  // the conversation goes on with it
        status("choice saved");
      } catch (e) { status("choice not saved: " + e.message); }
    };
    const row = document.createElement("div");
    row.className = "rate";
    row.appendChild(b);
    div.after(row);
  });
}

async function send() {
  const text = $("message").value.trim();
  const model = $("model").value;
  if (!text || running.length) return;
  if (!model) { status("no model to talk to"); return; }
  const messages = conversation(text);
  $("message").value = "";
  turn("user", text);
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    if ($("two-answers").checked) {
      const pair = document.createElement("div");
      pair.className = "pair";
      log.appendChild(pair);
      const columns = [0, 1].map(() => pair.appendChild(document.createElement("div")));
      const divs = columns.map((column) => turn("assistant", "", column));
      const answers = await Promise.all(divs.map((d) => streamAnswer(model, messages, d)));
      history.push({ role: "user", content: text }, { role: "assistant", content: answers[0] });
      if (divs.every((d) => d.dataset.state === "done") && answers[0] !== answers[1]
          && answers.every((a) => a.trim())) {
        pickButtons(pair, divs, model, messages, answers, history.length - 1);
      } else if (answers[0] === answers[1]) {
        status("the two answers are the same: nothing to pick");
      } else if (!answers.every((a) => a.trim())) {
        status("an answer is empty: nothing to pick");  // (a preference pair needs two answers)
      }
    } else {
      const div = turn("assistant", "");
      const answer = await streamAnswer(model, messages, div);
      history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      if (div.dataset.state !== "error") rateButtons(div, model, messages, answer);
    }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => running.forEach((c) => c.abort()));
$("reset").addEventListener("click", () => { history = []; log.textContent = ""; status("new chat"); });
$("api-key").value = localStorage.getItem("scratchllm-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("scratchllm-api-key", $("api-key").value.trim());
  loadModels();
});
loadModels();
