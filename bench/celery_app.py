"""The Celery side of the comparison: one task that does what a ParaDecom runner does for one task.

    celery -A bench.celery_app worker -P prefork -c 2    # or -P threads -c 64

The task builds the same chat messages as the runner (`runner/prompt.py`), makes the same chat call
through the real openai client to the same fake-llm (`json_object` answers, same temperature and
max_tokens), validates the answer with the runner's own parser (`runner/schema.py`), and returns the
subtasks, which Celery stores in its result backend. Broker and backend: the Redis at
$BENCH_REDIS_URL; the LLM endpoint: $OPENAI_BASE_URL.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import openai
from celery import Celery

from paradecom import limits
from paradecom.runner.llm import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TIMEOUT_S
from paradecom.runner.prompt import build_messages
from paradecom.runner.schema import parse_decomposition
from paradecom.v1 import project_pb2, task_pb2

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = os.environ.get("PARADECOM_MODEL", limits.DEFAULT_MODEL)

app = Celery("paradecom_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3_600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Celery's defaults otherwise (prefetch multiplier 4, early acks): what a user gets out of the box.
)

_local = threading.local()


def _client() -> openai.OpenAI:
    """One openai client per process (prefork) or per thread (threads pool), made after the fork."""
    client = getattr(_local, "client", None)
    if client is None:
        client = openai.OpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY") or "bench",
            timeout=DEFAULT_TIMEOUT_S,
            max_retries=0,
        )
        _local.client = client
    return client


def assignment_for(
    project: dict[str, Any], title: str, description: str, depth: int, siblings: list[str]
) -> task_pb2.TaskAssignment:
    """The context a ParaDecom runner would be handed for this task (without the lease)."""
    return task_pb2.TaskAssignment(
        project=project_pb2.ProjectDefinition(
            name=project["name"],
            description=project["description"],
            goals=project.get("goals", []),
            constraints=project.get("constraints", []),
            max_depth=project["max_depth"],
        ),
        task=project_pb2.TaskSpec(title=title, description=description),
        sibling_titles=siblings,
        depth=depth,
        max_depth=project["max_depth"],
    )


@app.task(name="bench.decompose")
def decompose(
    project: dict[str, Any], title: str, description: str, depth: int, siblings: list[str]
) -> list[dict[str, Any]]:
    """Decompose one task: prompt, one chat call, parse and validate; the subtasks as dicts."""
    messages = build_messages(assignment_for(project, title, description, depth, siblings))
    response = _client().chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format={"type": "json_object"},
        temperature=DEFAULT_TEMPERATURE,
        max_tokens=DEFAULT_MAX_TOKENS,
    )
    text = response.choices[0].message.content or ""
    subtasks = parse_decomposition(text, title)
    return [
        {
            "key": s.key,
            "title": s.title,
            "description": s.description,
            "acceptance_criteria": list(s.acceptance_criteria),
            "depends_on": list(s.depends_on),
            "atomic": s.atomic,
            "atomic_reason": s.atomic_reason,
            "estimate_hours": s.estimate_hours,
        }
        for s in subtasks
    ]
