#!/usr/bin/env node
// ParaDecom runner in Node.js, written from proto/paradecom/v1/*.proto alone.
//
//   OPENAI_BASE_URL=http://127.0.0.1:8000/v1 node runner.js --leader 127.0.0.1:50051 --concurrency 4
//
// One PullTask stream per process; each assignment is decomposed by one chat completion (plus one
// re-ask when the answer is unusable) and sent back with SubmitResult under its lease token.
// See README.md for the protocol in brief.

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const PROG = "node-runner";
const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../proto");
const RPC_DEADLINE_MS = 10_000; // every unary call
const LLM_TIMEOUT_MS = 300_000; // one chat completion
const LLM_TRIES = 3; // per chat completion, for network errors, 429 and 5xx
const SUBMIT_TRIES = 10; // SubmitResult while the leader is unreachable
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const MAX_SUBTASKS = 20; // leader's fan-out limit (not in the proto; see README)
const MAX_TITLE_CHARS = 300; // Subtask.title: 1 to 300 characters
const MAX_ERROR_CHARS = 4_000; // FailTaskRequest.error: at most 4,000 characters are kept
// Sizes the leader refuses with INVALID_ARGUMENT (paradecom/limits.py; not in the proto's comments).
const MAX_KEY_CHARS = 64, MAX_DESCRIPTION_CHARS = 20_000, MAX_LIST_ITEMS = 100, MAX_ITEM_CHARS = 2_000, MAX_HOURS = 1e6;
const USAGE = "usage: node runner.js --leader HOST:PORT [--concurrency N] [--model NAME] [--runner-id ID] [--drain-timeout S]";

// ---------------------------------------------------------------- flags and logging

function die(message) {
  process.stderr.write(`${PROG}: error: ${message}\n`);
  process.exit(2);
}

function parseFlags(argv) {
  const opts = {
    leader: process.env.PARADECOM_LEADER || "",
    concurrency: 4,
    model: process.env.PARADECOM_MODEL || "gpt-4o-mini",
    runnerId: `${hostname()}-node-${process.pid}-${randomBytes(3).toString("hex")}`,
    drainTimeoutS: 30,
  };
  const names = { "--leader": "leader", "--concurrency": "concurrency", "--model": "model",
    "--runner-id": "runnerId", "--drain-timeout": "drainTimeoutS" };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    if (flag === "-h" || flag === "--help") {
      process.stdout.write(`${USAGE}\nThe LLM endpoint is OPENAI_BASE_URL (default https://api.openai.com/v1), key OPENAI_API_KEY.\n`);
      process.exit(0);
    }
    if (!(flag in names)) die(`unknown argument ${JSON.stringify(argv[i])} (${USAGE})`);
    if (value === undefined) {
      if (i + 1 >= argv.length) die(`${flag} needs a value`);
      value = argv[++i];
    }
    opts[names[flag]] = value;
  }
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):\d{1,5}$/.test(opts.leader) || Number(opts.leader.split(":").pop()) > 65535) {
    die(opts.leader ? `--leader ${JSON.stringify(opts.leader)} is not HOST:PORT` : "--leader HOST:PORT is required");
  }
  const n = Number(opts.concurrency);
  if (!Number.isInteger(n) || n < 1 || n > 1024) die(`--concurrency must be an integer from 1 to 1024, not ${JSON.stringify(opts.concurrency)}`);
  opts.concurrency = n;
  const d = Number(opts.drainTimeoutS);
  if (!Number.isFinite(d) || d < 0 || String(opts.drainTimeoutS).trim() === "") die(`--drain-timeout must be a number of seconds >= 0, not ${JSON.stringify(opts.drainTimeoutS)}`);
  opts.drainTimeoutS = d;
  if (!opts.model.trim()) die("--model must not be empty");
  if (opts.runnerId.length < 1 || opts.runnerId.length > 200) die("--runner-id must be 1 to 200 characters");
  return opts;
}

function log(level, msg, fields = {}) {
  const extra = Object.entries(fields).map(([k, v]) => ` ${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}${extra.join("")}\n`);
}

const sleep = (ms, signal) => new Promise((ok) => {
  const t = setTimeout(ok, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); ok(); }, { once: true });
});
const backoff = (attempt) => Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt) * (0.5 + Math.random() / 2);

// ---------------------------------------------------------------- prompt and validation

const SYSTEM_PROMPT = `You break one task of a software project into subtasks.

Split the task into 2 to 7 subtasks that together cover all of it, do not overlap each other, and do not
repeat the work of the sibling tasks you are shown. Titles are short and start with a verb. Each subtask
has concrete, testable acceptance criteria. "key" is a short id unique among the subtasks ("1", "2", ...);
"depends_on" lists keys of other subtasks in your answer that must be finished first (never its own key,
no cycles). "atomic" is true when one person can do the subtask without further breakdown, and
"atomic_reason" says why or why not. "estimate_hours" is the effort in hours, a number >= 0.

Answer with only a JSON object of this shape, no prose and no code fences:
{"subtasks": [{"key": "1", "title": "Design the database schema", "description": "What it covers and where its edges are.",
  "acceptance_criteria": ["A testable statement"], "depends_on": [], "atomic": true,
  "atomic_reason": "One person can finish it in a day.", "estimate_hours": 6}]}`;

const oneLine = (s) => String(s).split(/\s+/).filter(Boolean).join(" ");
const bullets = (items) => items.map((s) => `- ${s}`).join("\n");

function markers(a) {
  // Machine-readable lines (the fake LLM reads the first of each in the last user message).
  return `Task to decompose: ${oneLine(a.task.title)}\nTask depth: ${a.depth}`;
}

function buildMessages(a) {
  const p = a.project;
  const parts = [markers(a), `# Project\nName: ${p.name}\nDescription: ${p.description}`];
  if (p.goals.length) parts.push(`Goals:\n${bullets(p.goals)}`);
  if (p.constraints.length) parts.push(`Constraints:\n${bullets(p.constraints)}`);
  if (a.ancestors.length) {
    parts.push("# Where the task sits (top-level task first)\n" + a.ancestors.map((t, i) => `${"  ".repeat(i)}${i + 1}. ${t.title}`).join("\n"));
  }
  if (a.sibling_titles.length) parts.push(`# Sibling tasks (handled separately; do not cover their work)\n${bullets(a.sibling_titles)}`);
  const t = a.task;
  let task = `# The task to decompose\nTitle: ${t.title}`;
  if (t.description) task += `\nDescription: ${t.description}`;
  if (t.acceptance_criteria.length) task += `\nAcceptance criteria:\n${bullets(t.acceptance_criteria)}`;
  task += `\nIts depth is ${a.depth}; its subtasks will be at depth ${a.depth + 1}.`;
  if (a.max_depth > 0 && a.depth + 1 >= a.max_depth) task += " That is the depth limit: they will not be broken down further, so make each small enough for one person.";
  parts.push(task);
  return [{ role: "system", content: SYSTEM_PROMPT }, { role: "user", content: parts.join("\n\n") }];
}

function reaskMessages(messages, a, badAnswer, errors) {
  const text = `Your answer cannot be used:\n${bullets(errors.slice(0, 20))}\n\nAnswer again with only the corrected JSON object (all subtasks).\n\n${markers(a)}`;
  return [...messages, { role: "assistant", content: badAnswer }, { role: "user", content: text }];
}

function parseJson(text) {
  const body = String(text ?? "").trim().replace(/^```[a-zA-Z]*\s*/, "").replace(/\s*```$/, "");
  try { return JSON.parse(body); } catch (e) {
    const start = body.indexOf("{"), end = body.lastIndexOf("}");
    if (start >= 0 && end > start) { try { return JSON.parse(body.slice(start, end + 1)); } catch { /* fall through */ } }
    throw new Error(`the answer is not valid JSON (${e.message})`);
  }
}

// Returns {subtasks, errors}: Subtask messages ready for SubmitResult, or errors worded for a re-ask.
function validate(text, parentTitle) {
  let data;
  try { data = parseJson(text); } catch (e) { return { subtasks: [], errors: [e.message] }; }
  const errors = [];
  if (data === null || typeof data !== "object" || Array.isArray(data)) return { subtasks: [], errors: ["the answer must be a JSON object with a \"subtasks\" list"] };
  if (!Array.isArray(data.subtasks)) return { subtasks: [], errors: ["\"subtasks\" must be a list"] };
  if (data.subtasks.length < 1 || data.subtasks.length > MAX_SUBTASKS) errors.push(`"subtasks" must hold 1 to ${MAX_SUBTASKS} items, not ${data.subtasks.length}`);
  const isText = (v) => typeof v === "string" || (typeof v === "number" && Number.isFinite(v));
  const textList = (v, where) => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every(isText)) { errors.push(`${where} must be a list of strings`); return []; }
    if (v.length > MAX_LIST_ITEMS || v.some((x) => String(x).length > MAX_ITEM_CHARS)) errors.push(`${where}: at most ${MAX_LIST_ITEMS} items of at most ${MAX_ITEM_CHARS} characters`);
    return v.map((s) => String(s).trim()).filter(Boolean);
  };
  const subtasks = data.subtasks.map((s, i) => {
    const at = `subtask ${i + 1}`;
    if (s === null || typeof s !== "object" || Array.isArray(s)) { errors.push(`${at} must be an object`); return null; }
    const key = isText(s.key) ? String(s.key).trim() : "";
    if (!key || key.length > MAX_KEY_CHARS) errors.push(`${at}: "key" must be a non-empty string of at most ${MAX_KEY_CHARS} characters`);
    const title = typeof s.title === "string" ? s.title.trim() : "";
    if (!title || title.length > MAX_TITLE_CHARS) errors.push(`${at}: "title" must be a string of 1 to ${MAX_TITLE_CHARS} characters`);
    else if (oneLine(title).toLowerCase() === oneLine(parentTitle).toLowerCase()) errors.push(`${at}: "title" repeats the task being decomposed`);
    if (s.description != null && typeof s.description !== "string") errors.push(`${at}: "description" must be a string`);
    else if (s.description?.length > MAX_DESCRIPTION_CHARS) errors.push(`${at}: "description" is longer than ${MAX_DESCRIPTION_CHARS} characters`);
    if (typeof s.atomic !== "boolean") errors.push(`${at}: "atomic" must be true or false`);
    if (s.atomic_reason != null && typeof s.atomic_reason !== "string") errors.push(`${at}: "atomic_reason" must be a string`);
    else if (s.atomic_reason?.length > MAX_ITEM_CHARS) errors.push(`${at}: "atomic_reason" is longer than ${MAX_ITEM_CHARS} characters`);
    const hours = s.estimate_hours ?? 0;
    if (typeof hours !== "number" || !(hours >= 0 && hours < MAX_HOURS)) errors.push(`${at}: "estimate_hours" must be a number from 0 to ${MAX_HOURS}`);
    return {
      key, title, description: typeof s.description === "string" ? s.description.trim() : "",
      acceptance_criteria: textList(s.acceptance_criteria, `${at}: "acceptance_criteria"`),
      depends_on: textList(s.depends_on, `${at}: "depends_on"`), atomic: s.atomic === true,
      atomic_reason: typeof s.atomic_reason === "string" ? s.atomic_reason.trim() : "", estimate_hours: typeof hours === "number" ? hours : 0,
    };
  }).filter(Boolean);
  const keys = new Set();
  for (const s of subtasks) { if (s.key && keys.has(s.key)) errors.push(`key ${JSON.stringify(s.key)} is used by more than one subtask`); keys.add(s.key); }
  const titles = new Set();
  for (const s of subtasks) { const t = s.title.toLowerCase(); if (t && titles.has(t)) errors.push(`title ${JSON.stringify(s.title)} is used by more than one subtask`); titles.add(t); }
  for (const s of subtasks) {
    for (const d of s.depends_on) {
      if (d === s.key) errors.push(`subtask ${JSON.stringify(s.key)} depends on itself`);
      else if (!keys.has(d)) errors.push(`subtask ${JSON.stringify(s.key)} depends on ${JSON.stringify(d)}, which is no subtask's key`);
    }
    s.depends_on = [...new Set(s.depends_on)];
  }
  if (!errors.length) {
    // Cycle check: depth-first search over sibling dependencies.
    const deps = new Map(subtasks.map((s) => [s.key, s.depends_on]));
    const state = new Map(); // key -> 1 visiting, 2 done
    const visit = (k, path) => {
      if (state.get(k) === 2) return false;
      if (state.get(k) === 1) { errors.push(`dependency cycle: ${[...path.slice(path.indexOf(k)), k].join(" -> ")}`); return true; }
      state.set(k, 1);
      for (const d of deps.get(k)) if (visit(d, [...path, k])) return true;
      state.set(k, 2);
      return false;
    };
    for (const k of deps.keys()) if (visit(k, [])) break;
  }
  return { subtasks, errors };
}

// ---------------------------------------------------------------- LLM

// A task that cannot be done on this attempt: reported with FailTask(retryable).
class TaskError extends Error {}

// `usage` is the task's Usage message, updated in place; `onRateLimited` runs at each HTTP 429.
async function chat(messages, signal, usage, onRateLimited) {
  const base = (process.env.OPENAI_BASE_URL || "https://api.openai.com/v1").replace(/\/+$/, "");
  const headers = { "content-type": "application/json" };
  if (process.env.OPENAI_API_KEY) headers.authorization = `Bearer ${process.env.OPENAI_API_KEY}`;
  const body = JSON.stringify({ model: opts.model, messages, response_format: { type: "json_object" } });
  let last = "";
  for (let attempt = 0; attempt < LLM_TRIES; attempt++) {
    if (attempt) await sleep(backoff(attempt), signal);
    if (signal.aborted) throw signal.reason;
    let res;
    usage.calls += 1;
    try {
      res = await fetch(`${base}/chat/completions`, { method: "POST", headers, body, signal: AbortSignal.any([signal, AbortSignal.timeout(LLM_TIMEOUT_MS)]) });
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      last = `LLM request failed: ${e.cause?.message || e.message}`;
      continue;
    }
    const raw = await res.text().catch(() => "");
    if (res.status === 429 || res.status >= 500) {
      last = `LLM answered HTTP ${res.status}: ${raw.slice(0, 500)}`;
      const after = Number(res.headers.get("retry-after"));
      if (res.status === 429) {
        usage.rate_limited += 1;
        if (after > 0) usage.retry_after_ms = Math.max(usage.retry_after_ms, Math.round(after * 1000));
        onRateLimited();
      }
      if (after > 0 && after <= 60) await sleep(after * 1000, signal);
      continue;
    }
    if (!res.ok) throw new TaskError(`LLM answered HTTP ${res.status}: ${raw.slice(0, 500)}`);
    let data;
    try { data = JSON.parse(raw); } catch { throw new TaskError(`LLM answered a body that is not JSON: ${raw.slice(0, 200)}`); }
    usage.prompt_tokens += Number(data.usage?.prompt_tokens) || 0;
    usage.completion_tokens += Number(data.usage?.completion_tokens) || 0;
    const content = data.choices?.[0]?.message?.content;
    if (typeof content !== "string") throw new TaskError("LLM answer has no choices[0].message.content");
    return content;
  }
  throw new TaskError(last);
}

// Asks, validates, re-asks once with the errors. Returns the subtasks or throws TaskError.
async function decompose(a, signal, usage, onRateLimited) {
  let messages = buildMessages(a);
  for (let round = 0; round < 2; round++) {
    if (round) usage.reasks += 1;
    const answer = await chat(messages, signal, usage, onRateLimited);
    const { subtasks, errors } = validate(answer, a.task.title);
    if (!errors.length) return subtasks;
    if (round === 1) throw new TaskError(`LLM answer unusable after a re-ask: ${errors.join("; ")}`);
    log("warn", "LLM answer unusable; re-asking", { task: a.lease.task_id, errors: errors.slice(0, 5).join("; ") });
    messages = reaskMessages(messages, a, answer, errors);
  }
  throw new TaskError("unreachable");
}

// ---------------------------------------------------------------- leader

const opts = parseFlags(process.argv.slice(2));
const packageDefinition = protoLoader.loadSync("paradecom/v1/task_service.proto", {
  includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const v1 = grpc.loadPackageDefinition(packageDefinition).paradecom.v1;
const client = new v1.TaskService(opts.leader, grpc.credentials.createInsecure(), {
  "grpc.keepalive_time_ms": 20_000, "grpc.keepalive_timeout_ms": 10_000, "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_receive_message_length": 64 * 1024 * 1024, "grpc.max_send_message_length": 64 * 1024 * 1024,
  "grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 5_000,
});
const STALE = new Set([grpc.status.ABORTED, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION]);
const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL, grpc.status.UNKNOWN]);

function rpc(method, request) {
  return new Promise((ok, fail) => {
    client[method](request, { deadline: Date.now() + RPC_DEADLINE_MS }, (err, res) => (err ? fail(err) : ok(res)));
  });
}
const codeName = (err) => Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? String(err.code);

const held = new Map(); // task_id -> {abort(), done: Promise}
let stopping = false;
let stream = null;

// Works one assignment from lease to SubmitResult, FailTask or ReleaseTask.
async function work(a, ctrl) {
  const { lease } = a;
  // The whole attempt's usage goes with SubmitResult/FailTask; each heartbeat carries what changed
  // since the previous acknowledged one (retry_after_ms: the longest Retry-After seen since then).
  const usage = { prompt_tokens: 0, completion_tokens: 0, calls: 0, reasks: 0, rate_limited: 0, retry_after_ms: 0, cache_hits: 0 };
  const reported = { ...usage };
  const ids = { task: lease.task_id, attempt: lease.attempt };
  let beating = null, again = false, paused = false;
  const beat = () => {
    if (paused) return;
    if (beating) { again = true; return; } // one heartbeat at a time, so no delta is sent twice
    const sent = { ...usage };
    const delta = Object.fromEntries(Object.keys(usage).map((k) => [k, k === "retry_after_ms" ? (usage.rate_limited > reported.rate_limited ? usage.retry_after_ms : 0) : usage[k] - reported[k]]));
    beating = rpc("ExtendLease", { task_id: lease.task_id, lease_token: lease.token, usage: delta })
      .then((res) => { Object.assign(reported, sent); if (res.cancelled) ctrl.abort(new Error("project cancelled")); }, (err) => {
        if (STALE.has(err.code)) ctrl.abort(new Error(`lease lost (${codeName(err)}: ${err.details})`));
        else log("warn", "heartbeat failed; will retry", { ...ids, code: codeName(err), details: err.details });
      })
      .finally(() => { beating = null; if (again && !paused && !ctrl.signal.aborted) { again = false; beat(); } });
  };
  // Before a call that ends the lease: no heartbeat may reach the leader after it (the leader
  // would refuse it as a stale lease, and count it).
  const quiet = async () => { paused = true; again = false; await beating; };
  const timer = setInterval(beat, Math.max(100, Math.floor((lease.timeout_ms || 30_000) / 3)));
  try {
    log("info", "task assigned", { ...ids, depth: a.depth, title: a.task.title });
    let subtasks = await decompose(a, ctrl.signal, usage, beat); // a 429 heartbeats at once
    // One child is the task again under another name: the task becomes a leaf instead.
    const stop_reason = subtasks.length === 1 ? "fewer than 2 subtasks" : "";
    if (stop_reason) subtasks = [];
    for (let attempt = 0; ; attempt++) {
      if (ctrl.signal.aborted && ctrl.signal.reason?.message !== "shutdown") throw ctrl.signal.reason;
      await quiet();
      try {
        const res = await rpc("SubmitResult", { task_id: lease.task_id, lease_token: lease.token, subtasks, usage, stop_reason });
        log("info", "result submitted", { ...ids, subtasks: subtasks.length, stop_reason, children_queued: res.children_queued, duplicate: res.duplicate });
        return;
      } catch (err) {
        if (STALE.has(err.code)) { log("warn", "result refused; abandoning the task", { ...ids, code: codeName(err), details: err.details }); return; }
        if (!TRANSIENT.has(err.code) || attempt + 1 >= SUBMIT_TRIES) throw new TaskError(`SubmitResult failed (${codeName(err)}: ${err.details})`);
        paused = false;
        await sleep(backoff(attempt));
      }
    }
  } catch (err) {
    await quiet();
    if (ctrl.signal.aborted && ctrl.signal.reason?.message === "shutdown") {
      await rpc("ReleaseTask", { task_id: lease.task_id, lease_token: lease.token, reason: "runner shutting down" })
        .then(() => log("info", "task released", ids), (e) => log("warn", "ReleaseTask failed", { ...ids, code: codeName(e), details: e.details }));
    } else if (ctrl.signal.aborted) {
      log("info", "task abandoned", { ...ids, reason: ctrl.signal.reason?.message });
    } else {
      const error = String(err instanceof TaskError ? err.message : err?.stack || err).slice(0, MAX_ERROR_CHARS);
      log("warn", "task failed", { ...ids, error: error.slice(0, 300) });
      await rpc("FailTask", { task_id: lease.task_id, lease_token: lease.token, error, retryable: true, usage })
        .then((res) => log("info", "failure reported", { ...ids, status: res.status }),
          (e) => log("warn", "FailTask failed", { ...ids, code: codeName(e), details: e.details }));
    }
  } finally {
    clearInterval(timer);
  }
}

function accept(a) {
  if (stopping) {
    rpc("ReleaseTask", { task_id: a.lease.task_id, lease_token: a.lease.token, reason: "runner shutting down" }).catch(() => {});
    return;
  }
  if (held.size >= opts.concurrency) log("warn", "leader sent more tasks than --concurrency", { held: held.size });
  const ctrl = new AbortController();
  const entry = { abort: () => ctrl.abort(new Error("shutdown")) };
  entry.done = work(a, ctrl).finally(() => held.delete(a.lease.task_id));
  held.set(a.lease.task_id, entry);
}

// Sent unchanged on every stream of this process (PullTaskRequest.session_id): a reconnect keeps
// the leases in hand; a restart under the same --runner-id has the leader end the old ones at once.
const SESSION_ID = randomBytes(16).toString("hex");

// One PullTask stream at a time; reconnects with backoff whenever it ends, until shutdown.
async function pullLoop() {
  for (let failures = 0; !stopping;) {
    const received = await new Promise((done) => {
      let got = false, closed = false;
      const finish = (why) => { if (!closed) { closed = true; stream = null; done({ got, why }); } };
      stream = client.PullTask({ runner_id: opts.runnerId, session_id: SESSION_ID, max_in_flight: opts.concurrency });
      stream.on("data", (msg) => {
        got = true;
        if (msg.event === "assignment") accept(msg.assignment);
        else if (msg.event === "drain") log("info", "leader is draining", { reason: msg.drain.reason });
      });
      stream.on("error", (err) => {
        if (err.code === grpc.status.INVALID_ARGUMENT || err.code === grpc.status.UNIMPLEMENTED) {
          log("error", "the leader refuses this runner; retrying cannot help", { code: codeName(err), details: err.details });
          process.exit(1);
        }
        finish(`${codeName(err)}: ${err.details}`);
      });
      stream.on("end", () => finish("stream ended"));
    });
    if (stopping) break;
    failures = received.got ? 0 : failures + 1;
    const wait = backoff(failures);
    log("warn", "PullTask stream closed; reconnecting", { why: received.why, in_ms: Math.round(wait) });
    await sleep(wait, shutdownSignal.signal);
  }
}

// ---------------------------------------------------------------- shutdown

const shutdownSignal = new AbortController();

async function shutdown(sig) {
  if (stopping) {
    log("warn", "second signal: releasing every task now", { signal: sig });
    for (const e of held.values()) e.abort();
    return;
  }
  stopping = true;
  shutdownSignal.abort();
  log("info", "stopping: no new tasks; finishing or releasing the ones held", { signal: sig, held: held.size });
  stream?.cancel();
  const all = () => Promise.allSettled([...held.values()].map((e) => e.done));
  const graceful = await Promise.race([all().then(() => true), sleep(opts.drainTimeoutS * 1000).then(() => held.size === 0)]);
  if (!graceful) {
    for (const e of held.values()) e.abort();
    await Promise.race([all(), sleep(RPC_DEADLINE_MS + 1000)]);
  }
  client.close();
  log("info", "stopped");
  process.exit(0);
}

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => void shutdown(sig));
log("info", "runner started", { runner_id: opts.runnerId, leader: opts.leader, concurrency: opts.concurrency, model: opts.model });
pullLoop().catch((err) => { log("error", "runner crashed", { error: err?.stack || String(err) }); process.exit(1); });
