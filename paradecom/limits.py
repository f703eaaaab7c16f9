"""Every limit ParaDecom enforces, and every default that more than one module uses, in one place,
so the docs, the flags and the checks cannot drift apart.

Each limit is checked where input enters (project file, CLI flag, RPC field, LLM answer) and
reported with its name and value; README.md's "Limits" table lists the same numbers. Each value
says why it is what it is. This module imports nothing, so the lightest entry point (the runner's
signal handler, fake-llm) can read it.
"""

from __future__ import annotations

# Project definition.
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 20_000
MAX_LIST_ITEMS = 100  # goals, constraints, acceptance criteria
MAX_ITEM_CHARS = 2_000  # one goal, constraint or criterion
MAX_TITLE_CHARS = 300
MAX_SEED_TASKS = 10_000
MAX_PROJECT_FILE_BYTES = 10 * 1024 * 1024
# A project as SubmitProject takes it, serialized (seeds included): half the message limit, so the
# first page of GetTaskTree (the definition, a summary and up to TREE_PAGE_BYTES of tasks) always fits
# in one message, whatever the seeds hold.
MAX_DEFINITION_BYTES = 32 * 1024 * 1024

# Tree shape.
DEFAULT_MAX_DEPTH = 3
MAX_DEPTH_LIMIT = 10
MAX_SUBTASKS = 20  # children of one task
MAX_KEY_CHARS = 64
MAX_TASKS_PER_PROJECT = 200_000
# Titles of a task's siblings in its assignment (TaskAssignment.sibling_titles): enough for the model
# to see what the others cover, not a whole level of a wide tree in every assignment.
MAX_SIBLING_TITLES = 30
MAX_PROJECT_TOKENS = 10**12
# GetTaskTree in pages: at most this many tasks a page (GetTaskTreeRequest.page_size), and a page is
# closed at about TREE_PAGE_BYTES (one task is under 1 MiB at the limits above, so a page always
# holds at least one).
MAX_TREE_PAGE_SIZE = 10_000
TREE_PAGE_BYTES = 4 * 1024 * 1024

# The range of the contract's integer types: what every number the leader stores or sends must fit.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# LLM usage a runner reports in one call (Usage, in SubmitResult, SubmitResults, FailTask and
# ExtendLease, ReleaseTask), each field checked where it comes in (INVALID_ARGUMENT above the limit).
# A project's results and failures are at most MAX_TASKS_PER_PROJECT x MAX_ATTEMPTS_LIMIT reports
# (2 x 10**7), whose totals stay far below INT64_MAX with these limits (tokens: 2 x 10**17; counts:
# 2 x 10**13). Releases charge no attempt, so their number has no bound: the leader also saturates
# every total at INT64_MAX, and no sequence of reports can overflow one.
MAX_USAGE_TOKENS = 10**10  # prompt_tokens, completion_tokens
MAX_USAGE_COUNT = 1_000_000  # calls, reasks, rate_limited, cache_hits
# Usage.retry_after_ms: an HTTP Retry-After pauses dispatch for every runner, for at most this long
# (10 minutes: what hosted endpoints give for per-minute limits, with room). A longer value is taken
# as this one: the pause ends, and the AIMD cap and the runners' own retries pace what follows.
MAX_RETRY_AFTER_MS = 600_000

# LLM answers. A real answer is a few KB (2,000 tokens by default) and no model writes a million
# characters in one answer; anything longer is a model stuck in a loop, refused before it is
# parsed (an InvalidAnswer, re-asked) so it cannot tie up the runner's event loop.
MAX_ANSWER_CHARS = 1_000_000

# Cluster.
# Where a leader serves and clients and runners look for it unless told otherwise: loopback, so a
# leader started without flags is not reachable from other machines (leader/server.py refuses a
# public address without a token), on the port gRPC servers customarily use.
DEFAULT_LEADER_ADDRESS = "127.0.0.1:50051"
MAX_RUNNERS = 64  # `paradecom run --runners`
# `paradecom run --runners auto`: as many decompositions at once as the work, the LLM budget and the
# machine allow (leader/parallelism.py), never more than MAX_AUTO_SLOTS.
DEFAULT_RUNNERS = "auto"
MAX_AUTO_SLOTS = 256
# Enough parallel calls per runner to hide one call's latency without tripping a hosted endpoint's
# rate limit.
DEFAULT_CONCURRENCY = 8
# A local run sends the first calls of at most this many top-level tasks before its leader is up
# (runner/head_start.py); the rest wait for the leader's first leases, a fraction of a second later.
HEAD_START_CALLS = 8
MAX_CONCURRENCY = 1_024  # tasks in flight per runner (`--concurrency`, PullTask.max_in_flight)
# On SIGTERM a runner lets the tasks in hand finish for this long before it releases them (`--drain-
# timeout`): about one slow LLM answer, so work nearly done is not thrown away, and within the time
# an orchestrator waits before SIGKILL (docker/compose.yaml gives a runner 45 s), after which the
# tasks not released come back only when their leases expire.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
MAX_RUNNER_ID_CHARS = 200
MAX_ERROR_CHARS = 4_000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # gRPC send/receive, both directions
# Batching on the wire: assignments per PullTask message (PullTaskRequest.max_batch), results per
# SubmitResults call. A batch is closed at about BATCH_BYTES, far below the message limit, so a batch
# of large tasks is split rather than refused.
MAX_BATCH = 256
BATCH_BYTES = 4 * 1024 * 1024
MAX_ATTEMPTS_LIMIT = 100
# Three leases per task: one failure of a runner or of the LLM is retried twice before the task is
# dead-lettered.
DEFAULT_MAX_ATTEMPTS = 3
MIN_LEASE_TIMEOUT_S = 1.0
MAX_LEASE_TIMEOUT_S = 3_600.0
# Long enough for a slow LLM answer between two heartbeats (runners extend every third of it),
# short enough that a killed runner's tasks go back within a minute.
DEFAULT_LEASE_TIMEOUT_S = 30.0
# The global LLM budget (`--llm-rpm`, `--llm-tpm`, `paradecom budget`, SetLlmBudget): far above any
# hosted endpoint's limits (tens of thousands of requests and tens of millions of tokens a minute),
# so they never bind a real budget; a value beyond them is a mistake, refused with its flag's name.
MAX_RPM = 1_000_000
MAX_TPM = 1_000_000_000

# What a runner lets one answer cost (max_tokens; $PARADECOM_MAX_TOKENS): room for a whole answer at
# the default fan-out, each subtask with its description and criteria, and a bound on what a model
# that repeats itself costs. The leader's LLM budget counts it as each call's completion.
DEFAULT_MAX_TOKENS = 2_000

# The model runners ask for unless told otherwise (`--model`, $PARADECOM_MODEL): a small, cheap
# OpenAI model that follows a JSON schema well enough for decomposition.
DEFAULT_MODEL = "gpt-4o-mini"
