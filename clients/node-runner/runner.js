#!/usr/bin/env node
// ParaDecom runner in Node.js, written from proto/paradecom/v1/*.proto alone.
//
//   OPENAI_BASE_URL=http://127.0.0.1:8000/v1 node runner.js --leader 127.0.0.1:50051 --concurrency 4
//
// One PullTask stream per process (assignments one by one or in batches); each assignment is
// decomposed by the chat completion its LlmRequest describes (re-asked as its ReaskRule says) and
// the results go back with SubmitResults under their lease tokens. See README.md.

import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import Ajv2020 from "ajv/dist/2020.js";

const PROG = "node-runner";
const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../proto");
// The contract's limits and the defaults this runner shares with the Python one have the values of
// paradecom/limits.py, where each is explained; change them there and here together.
const RPC_DEADLINE_MS = 10_000; // every unary call
const LLM_TIMEOUT_MS = 300_000; // one chat completion
const LLM_TRIES = 3; // per chat completion, for network errors, 429 and 5xx
const SUBMIT_TRIES = 10; // SubmitResult while the leader is unreachable
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const MAX_ERROR_CHARS = 4_000; // FailTaskRequest.error: at most 4,000 characters are kept
const MAX_BATCH = 256; // PullTaskRequest.max_batch and SubmitResultsRequest.results: at most 256
const MAX_CONCURRENCY = 1_024; // PullTaskRequest.max_in_flight: at most 1,024
const DEFAULT_DRAIN_TIMEOUT_S = 30;
const DEFAULT_MODEL = "gpt-4o-mini";
const MAX_TOKEN_BYTES = 4096; // the bearer token file: one line of at most 4 KiB
const MAX_REASONS = 20; // problems listed in one re-ask
const CONTRACT_VERSION = "paradecom.decompose/1"; // the LlmRequest version this runner follows
// What the Python runner sends besides the messages, so both make the same request.
const TEMPERATURE = 0.2;
const DEFAULT_MAX_TOKENS = 2_000;
const STRUCTURED_OUTPUT = ["auto", "json_schema", "json_object", "prompt"];
const USAGE = "usage: node runner.js --leader HOST:PORT [--concurrency N] [--model NAME] [--runner-id ID] [--drain-timeout S] "
  + "[--structured-output auto|json_schema|json_object|prompt] [--auth-token-file PATH] [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]";

// ---------------------------------------------------------------- flags and logging

function die(message) {
  process.stderr.write(`${PROG}: error: ${message}\n`);
  process.exit(2);
}

function readPem(path, flag) {
  if (path === undefined) return null;
  let data;
  try { data = readFileSync(path); } catch (e) { die(`${flag} ${path}: ${e.code === "ENOENT" ? "No such file or directory" : e.message}`); }
  if (!data.toString("utf8").trim()) die(`${flag} ${path}: the file is empty`);
  return data;
}

// The same rules as the Python runner (paradecom/security.py): --auth-token-file, else $PARADECOM_AUTH_TOKEN.
function readToken(path) {
  let token;
  if (path !== undefined) {
    const raw = readPem(path, "--auth-token-file");
    token = raw.toString("utf8").trim();
    if (!token || raw.length > MAX_TOKEN_BYTES || token.includes("\n")) die(`--auth-token-file ${path}: expected one line of text, at most 4 KiB`);
  } else {
    token = process.env.PARADECOM_AUTH_TOKEN || null;
  }
  if (token !== null && /[\x00-\x1f\x7f]/.test(token)) die("the auth token must be printable text on one line");
  return token;
}

function parseFlags(argv) {
  const opts = {
    leader: process.env.PARADECOM_LEADER || "",
    concurrency: 4,
    model: process.env.PARADECOM_MODEL || DEFAULT_MODEL,
    runnerId: `${hostname()}-node-${process.pid}-${randomBytes(3).toString("hex")}`,
    drainTimeoutS: DEFAULT_DRAIN_TIMEOUT_S,
    structuredOutput: process.env.PARADECOM_STRUCTURED_OUTPUT || "auto",
  };
  const names = { "--leader": "leader", "--concurrency": "concurrency", "--model": "model",
    "--runner-id": "runnerId", "--drain-timeout": "drainTimeoutS", "--structured-output": "structuredOutput",
    "--auth-token-file": "tokenFile", "--tls-ca": "tlsCa", "--tls-cert": "tlsCert", "--tls-key": "tlsKey" };
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
  if (!Number.isInteger(n) || n < 1 || n > MAX_CONCURRENCY) die(`--concurrency must be an integer from 1 to ${MAX_CONCURRENCY}, not ${JSON.stringify(opts.concurrency)}`);
  opts.concurrency = n;
  const d = Number(opts.drainTimeoutS);
  if (!Number.isFinite(d) || d < 0 || String(opts.drainTimeoutS).trim() === "") die(`--drain-timeout must be a number of seconds >= 0, not ${JSON.stringify(opts.drainTimeoutS)}`);
  opts.drainTimeoutS = d;
  if (!opts.model.trim()) die("--model must not be empty");
  if (opts.runnerId.length < 1 || opts.runnerId.length > 200) die("--runner-id must be 1 to 200 characters");
  if (!STRUCTURED_OUTPUT.includes(opts.structuredOutput)) die(`--structured-output must be one of ${STRUCTURED_OUTPUT.join(", ")}, not ${JSON.stringify(opts.structuredOutput)}`);
  const maxTokens = process.env.PARADECOM_MAX_TOKENS?.trim() || String(DEFAULT_MAX_TOKENS);
  opts.maxTokens = Number(maxTokens);
  if (!/^\d+$/.test(maxTokens) || opts.maxTokens < 1 || opts.maxTokens > 1_000_000) die(`PARADECOM_MAX_TOKENS=${JSON.stringify(maxTokens)} is out of range 1..1000000`);
  opts.token = readToken(opts.tokenFile);
  opts.tlsCa = readPem(opts.tlsCa, "--tls-ca");
  opts.tlsCert = readPem(opts.tlsCert, "--tls-cert");
  opts.tlsKey = readPem(opts.tlsKey, "--tls-key");
  if ((opts.tlsCert === null) !== (opts.tlsKey === null)) die("--tls-cert and --tls-key go together");
  if (opts.tlsCert !== null && opts.tlsCa === null) die("a client certificate (--tls-cert) needs --tls-ca, the CA of the leader's certificate");
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

// ---------------------------------------------------------------- the LLM request (LlmRequest in task.proto)

// A task that cannot be done on this attempt: reported with FailTask(retryable).
class TaskError extends Error {}

const ajv = new Ajv2020({ allErrors: true, strict: false });
const validators = new Map(); // answer_schema_json -> compiled validator (a leader sends few different ones)

// The assignment's LlmRequest, checked and ready to follow; TaskError when there is none this runner can follow.
function requestOf(a) {
  const r = a.llm_request;
  if (!r || !r.version) throw new TaskError("the leader sent no llm_request; this runner follows the contract's LlmRequest only");
  if (r.version !== CONTRACT_VERSION) throw new TaskError(`the leader's LLM request is version ${JSON.stringify(r.version.slice(0, 100))}; this runner follows ${CONTRACT_VERSION}`);
  let validate = validators.get(r.answer_schema_json);
  let schema;
  try {
    schema = JSON.parse(r.answer_schema_json);
    if (!validate) {
      validate = ajv.compile(schema);
      if (validators.size >= 64) validators.clear();
      validators.set(r.answer_schema_json, validate);
    }
  } catch (e) {
    throw new TaskError(`the leader's LLM request cannot be followed: answer_schema_json: ${e.message}`);
  }
  if (!r.messages.length || !(r.min_subtasks >= 1 && r.min_subtasks <= r.max_subtasks && r.max_subtasks <= 20)) {
    throw new TaskError("the leader's LLM request cannot be followed: no messages, or subtask bounds out of range");
  }
  return {
    messages: r.messages.map((m) => ({ role: m.role, content: m.content })),
    schema, validate, min: r.min_subtasks, max: r.max_subtasks,
    maxReasks: r.reask?.max_reasks ?? 0, template: r.reask?.template || "{reason}",
  };
}

// The re-ask: the request's messages, the unusable answer, and the template with the problems.
function reaskMessages(req, badAnswer, reasons) {
  const listed = (reasons.length ? reasons : ["the answer is not a valid decomposition"]).slice(0, MAX_REASONS);
  const reason = listed.map((s) => `- ${s}`).join("\n");
  return [...req.messages, { role: "assistant", content: badAnswer }, { role: "user", content: req.template.replaceAll("{reason}", reason) }];
}

// The JSON value in an answer: the whole text, else a ```json fenced block, else the first {...} around "subtasks".
function parseJson(text) {
  const body = String(text ?? "").trim();
  try { return JSON.parse(body); } catch (e) {
    const fenced = body.match(/```[ \t]*(?:json|JSON)?\s*([\s\S]*?)```/);
    if (fenced) { try { return JSON.parse(fenced[1]); } catch { /* next */ } }
    const start = body.indexOf("{"), end = body.lastIndexOf("}");
    if (body.includes('"subtasks"') && start >= 0 && end > start) { try { return JSON.parse(body.slice(start, end + 1)); } catch { /* fall through */ } }
    throw new Error(`the answer is not valid JSON (${e.message})`);
  }
}

// An answer's Subtask messages (key = position, depends_on = positions), or the reasons it is unusable.
function readAnswer(text, finishReason, req) {
  if (finishReason === "length") return { subtasks: [], errors: ["the answer was cut off at the length limit: write a shorter answer"] };
  let data;
  try { data = parseJson(text); } catch (e) { return { subtasks: [], errors: [e.message] }; }
  if (!req.validate(data)) {
    const errors = req.validate.errors.map((e) => {
      const at = e.instancePath.match(/^\/subtasks\/(\d+)(.*)$/);
      const where = at ? `subtask ${Number(at[1]) + 1}${at[2] ? `: ${at[2].slice(1).replaceAll("/", ".")}` : ""}` : (e.instancePath || "the answer");
      return `${where}: ${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ""}`;
    });
    return { subtasks: [], errors: [...new Set(errors)] };
  }
  const items = data.subtasks;
  if (items.length > req.max) return { subtasks: [], errors: [`${items.length} subtasks: give at most ${req.max}`] };
  const text_ = (v) => (typeof v === "string" ? v.trim() : "");
  const subtasks = items.map((s, i) => ({
    key: String(i + 1),
    title: text_(s.title),
    description: text_(s.description),
    acceptance_criteria: Array.isArray(s.acceptance_criteria) ? s.acceptance_criteria.map(text_).filter(Boolean) : [],
    depends_on: [...new Set((s.depends_on ?? []).map((d) => String(d)))],
    atomic: s.atomic === true,
    atomic_reason: text_(s.atomic_reason),
    estimate_hours: typeof s.estimate_hours === "number" ? s.estimate_hours : 0,
  }));
  return { subtasks, errors: [] };
}

// ---------------------------------------------------------------- the LLM

const FORMAT_WORDS = ["response_format", "response format", "json_schema", "json schema", "json_object", "schema"];
let learnedMode = null; // --structured-output auto: the first kind the endpoint did not refuse

function responseFormat(mode, schema) {
  if (mode === "json_schema") return { type: "json_schema", json_schema: { name: "decomposition", strict: true, schema } };
  if (mode === "json_object") return { type: "json_object", schema };
  return undefined;
}

// One chat completion of `messages` ({text, finishReason}); `usage` (the task's Usage) is updated in
// place; `onRateLimited` runs at each HTTP 429.
async function chat(messages, schema, signal, usage, onRateLimited) {
  const base = (process.env.OPENAI_BASE_URL || "https://api.openai.com/v1").replace(/\/+$/, "");
  const headers = { "content-type": "application/json" };
  if (process.env.OPENAI_API_KEY) headers.authorization = `Bearer ${process.env.OPENAI_API_KEY}`;
  const modes = opts.structuredOutput !== "auto" ? [opts.structuredOutput] : learnedMode ? [learnedMode] : ["json_schema", "json_object", "prompt"];
  let last = "";
  for (let attempt = 0; attempt < LLM_TRIES; attempt++) {
    if (attempt) await sleep(backoff(attempt), signal);
    if (signal.aborted) throw signal.reason;
    const mode = modes[0];
    const body = { model: opts.model, messages, temperature: TEMPERATURE, max_tokens: opts.maxTokens };
    const format = responseFormat(mode, schema);
    if (format) body.response_format = format;
    let res;
    usage.calls += 1;
    try {
      res = await fetch(`${base}/chat/completions`, { method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.any([signal, AbortSignal.timeout(LLM_TIMEOUT_MS)]) });
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      last = `LLM request failed: ${e.cause?.message || e.message}`;
      continue;
    }
    const raw = await res.text().catch(() => "");
    if (modes.length > 1 && [400, 415, 422, 500, 501].includes(res.status) && FORMAT_WORDS.some((w) => raw.toLowerCase().includes(w))) {
      // auto: the endpoint refused this kind of response_format; the next kind, not counted as a try.
      log("info", "endpoint refused a response format, trying the next", { mode });
      modes.shift();
      usage.calls -= 1;
      attempt -= 1;
      continue;
    }
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
    if (opts.structuredOutput === "auto" && !learnedMode) { learnedMode = mode; log("info", "structured output mode chosen", { mode }); }
    let data;
    try { data = JSON.parse(raw); } catch { throw new TaskError(`LLM answered a body that is not JSON: ${raw.slice(0, 200)}`); }
    usage.prompt_tokens += Number(data.usage?.prompt_tokens) || 0;
    usage.completion_tokens += Number(data.usage?.completion_tokens) || 0;
    const content = data.choices?.[0]?.message?.content;
    if (typeof content !== "string") throw new TaskError("LLM answer has no choices[0].message.content");
    return { text: content, finishReason: String(data.choices[0].finish_reason ?? "") };
  }
  throw new TaskError(last);
}

// ---------------------------------------------------------------- leader

const opts = parseFlags(process.argv.slice(2));
const packageDefinition = protoLoader.loadSync("paradecom/v1/task_service.proto", {
  includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const v1 = grpc.loadPackageDefinition(packageDefinition).paradecom.v1;
// TLS when --tls-ca is given (mutual with --tls-cert/--tls-key); the token goes on every call as
// `authorization: Bearer ...` metadata (per call, so it also works without TLS).
const channelCredentials = opts.tlsCa ? grpc.credentials.createSsl(opts.tlsCa, opts.tlsKey, opts.tlsCert) : grpc.credentials.createInsecure();
const client = new v1.TaskService(opts.leader, channelCredentials, {
  "grpc.keepalive_time_ms": 20_000, "grpc.keepalive_timeout_ms": 10_000, "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_receive_message_length": 64 * 1024 * 1024, "grpc.max_send_message_length": 64 * 1024 * 1024,
  "grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 5_000,
});
const STALE = new Set([grpc.status.ABORTED, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION]);
const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL, grpc.status.UNKNOWN]);

function metadata() {
  const md = new grpc.Metadata();
  if (opts.token) md.set("authorization", `Bearer ${opts.token}`);
  return md;
}

function rpc(method, request) {
  return new Promise((ok, fail) => {
    client[method](request, metadata(), { deadline: Date.now() + RPC_DEADLINE_MS }, (err, res) => (err ? fail(err) : ok(res)));
  });
}
const codeName = (err) => Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? String(err.code);

// Results ready at about the same time go to the leader in one SubmitResults call; each gets its own
// outcome back, as SubmitResult would have answered it (an error with .code and .details when refused).
const pendingResults = [];
let sending = false;
function submitResult(request) {
  return new Promise((ok, fail) => {
    pendingResults.push({ request, ok, fail });
    if (!sending) setImmediate(sendResults);
  });
}
async function sendResults() {
  if (sending) return;
  sending = true;
  try {
    while (pendingResults.length) {
      const batch = pendingResults.splice(0, MAX_BATCH);
      try {
        const res = await rpc("SubmitResults", { results: batch.map((p) => p.request) });
        batch.forEach((p, i) => {
          const outcome = res.outcomes[i];
          if (!outcome) p.fail(Object.assign(new Error("no outcome"), { code: grpc.status.INTERNAL, details: "the leader answered fewer outcomes than results" }));
          else if (outcome.status_code === grpc.status.OK) p.ok(outcome.response);
          else p.fail(Object.assign(new Error(outcome.status_message), { code: outcome.status_code, details: outcome.status_message }));
        });
      } catch (err) {
        for (const p of batch) p.fail(err); // the whole call failed (UNAVAILABLE and the like): each retries
      }
    }
  } finally {
    sending = false;
  }
}

const held = new Map(); // task_id -> {abort(), done: Promise}
let stopping = false;
let stream = null;

// Works one assignment from lease to SubmitResult, FailTask or ReleaseTask.
async function work(a, ctrl) {
  const { lease } = a;
  // The whole attempt's usage goes with SubmitResult/FailTask/ReleaseTask; each heartbeat carries
  // what changed since the previous acknowledged one (retry_after_ms: the longest Retry-After seen since then).
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
  // Submits under the lease: null once accepted (or the lease is gone), else the leader's reason for
  // refusing it (INVALID_ARGUMENT: the lease stays ours, to re-ask with that reason).
  const submit = async (subtasks, stop_reason) => {
    for (let attempt = 0; ; attempt++) {
      if (ctrl.signal.aborted && ctrl.signal.reason?.message !== "shutdown") throw ctrl.signal.reason;
      await quiet();
      try {
        const res = await submitResult({ task_id: lease.task_id, lease_token: lease.token, subtasks, usage, stop_reason });
        log("info", "result submitted", { ...ids, subtasks: subtasks.length, stop_reason, children_queued: res.children_queued, duplicate: res.duplicate });
        return null;
      } catch (err) {
        if (err.code === grpc.status.INVALID_ARGUMENT) { paused = false; return err.details; }
        if (STALE.has(err.code)) { log("warn", "result refused; abandoning the task", { ...ids, code: codeName(err), details: err.details }); return null; }
        if (!TRANSIENT.has(err.code) || attempt + 1 >= SUBMIT_TRIES) throw new TaskError(`SubmitResult failed (${codeName(err)}: ${err.details})`);
        paused = false;
        await sleep(backoff(attempt));
      }
    }
  };
  try {
    log("info", "task assigned", { ...ids, depth: a.depth, title: a.task.title });
    const req = requestOf(a);
    let asked = req.messages;
    for (let reasks = 0; ; reasks++) {
      const answer = await chat(asked, req.schema, ctrl.signal, usage, beat); // a 429 heartbeats at once
      let { subtasks, errors } = readAnswer(answer.text, answer.finishReason, req);
      let stopReason = "";
      if (!errors.length && subtasks.length < req.min) {
        const n = subtasks.length;
        if (reasks < req.maxReasks) errors = [`${n} subtask${n === 1 ? "" : "s"}: give at least ${req.min}, each a different part`];
        else [subtasks, stopReason] = [[], `fewer than ${req.min} subtasks`];
      }
      if (!errors.length) {
        const refused = await submit(subtasks, stopReason);
        if (refused === null) return;
        errors = [refused];
      }
      if (reasks >= req.maxReasks) throw new TaskError(`no usable answer in ${reasks + 1} answers; last errors: ${errors.join("; ")}`);
      log("warn", "LLM answer unusable; re-asking", { ...ids, errors: errors.slice(0, 5).join("; ") });
      usage.reasks += 1;
      asked = reaskMessages(req, answer.text, errors);
    }
  } catch (err) {
    await quiet();
    if (ctrl.signal.aborted && ctrl.signal.reason?.message === "shutdown") {
      await rpc("ReleaseTask", { task_id: lease.task_id, lease_token: lease.token, reason: "runner shutting down", usage })
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
  if (held.has(a.lease.task_id)) { log("warn", "assignment already in hand, ignored", { task: a.lease.task_id }); return; }
  // An assignment may come before the reply to the SubmitResult that freed its slot (task_service.proto).
  if (held.size >= opts.concurrency) log("info", "more tasks in hand than --concurrency until a result's reply arrives", { held: held.size + 1 });
  const ctrl = new AbortController();
  const entry = { abort: () => ctrl.abort(new Error("shutdown")) };
  entry.done = work(a, ctrl).finally(() => held.delete(a.lease.task_id));
  held.set(a.lease.task_id, entry);
}

// A refusal that no reconnect can fix: bad credentials, an untrusted certificate, a refused request.
function fatalRefusal(err) {
  if (err.code === grpc.status.UNAUTHENTICATED) return `the leader at ${opts.leader} refused our credentials: set PARADECOM_AUTH_TOKEN or --auth-token-file`;
  if (err.code === grpc.status.UNAVAILABLE && /ssl|handshake|certificate|tls/i.test(err.details || "")) {
    return `TLS handshake with the leader at ${opts.leader} failed: check that --tls-ca is the CA that signed the leader's certificate (and the leader's name matches it)`;
  }
  if (err.code === grpc.status.INVALID_ARGUMENT || err.code === grpc.status.UNIMPLEMENTED) return `the leader refuses this runner: ${codeName(err)}: ${err.details}`;
  return "";
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
      stream = client.PullTask({ runner_id: opts.runnerId, session_id: SESSION_ID, max_in_flight: opts.concurrency, max_batch: Math.min(opts.concurrency, MAX_BATCH) }, metadata());
      stream.on("data", (msg) => {
        got = true;
        if (msg.event === "assignment") accept(msg.assignment);
        else if (msg.event === "batch") msg.batch.assignments.forEach(accept);
        else if (msg.event === "drain") log("info", "leader is draining", { reason: msg.drain.reason });
      });
      stream.on("error", (err) => {
        const fatal = fatalRefusal(err);
        if (fatal) die(fatal);
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
