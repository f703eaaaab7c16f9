"""A small asyncio client for the leader's ProjectService, used by the CLI and the Python API.

gRPC errors become `LeaderUnavailableError` (try later) or `LeaderRefusedError` (the request is
wrong), each with a message a person can act on."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from paradecom import limits
from paradecom.errors import LeaderError, LeaderRefusedError, LeaderUnavailableError
from paradecom.grpc_auth import channel
from paradecom.project import ProjectDefinition
from paradecom.security import Security, is_tls_failure
from paradecom.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
)

TERMINAL_STATES = frozenset(
    {project_pb2.PROJECT_STATE_DONE, project_pb2.PROJECT_STATE_CANCELLED, project_pb2.PROJECT_STATE_FAILED}
)
CALL_TIMEOUT_S = 30.0

T = TypeVar("T")


def state_name(state: project_pb2.ProjectState.ValueType) -> str:
    """`PROJECT_STATE_DONE` -> `done`."""
    return project_pb2.ProjectState.Name(state).removeprefix("PROJECT_STATE_").lower()


def nested_tree(pages: Sequence[project_service_pb2.GetTaskTreeResponse]) -> project_service_pb2.GetTaskTreeResponse:
    """The pages of GetTaskTree (flat, parents first) as one nested answer, as page_size 0 gives it;
    the summary is the last page's (the newest)."""
    flat = [node for page in pages for node in page.tasks]
    children: dict[str, list[project_pb2.TaskNode]] = defaultdict(list)
    for node in flat:
        children[node.parent_id].append(node)
    # Deepest first: a protobuf repeated field copies on append, so a node's children must be
    # complete before it joins its parent.
    for node in sorted(flat, key=lambda n: -n.depth):
        node.children.extend(children.get(node.id, ()))
    return project_service_pb2.GetTaskTreeResponse(
        project=pages[-1].project, definition=pages[0].definition, tasks=children.get("", [])
    )


class LeaderClient:
    """`async with LeaderClient("host:port") as c: ...`"""

    def __init__(self, address: str, security: Security | None = None) -> None:
        self.address = address
        self._channel = channel(address, security)
        self._stub = project_service_pb2_grpc.ProjectServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)

    async def __aenter__(self) -> LeaderClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._channel.close()

    def _error(self, exc: grpc.aio.AioRpcError) -> LeaderError:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE and is_tls_failure(exc.details()):
            return LeaderRefusedError(
                f"TLS handshake with the leader at {self.address} failed: check that --tls-ca is the CA that "
                "signed the leader's certificate (and the leader's name matches it)"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return LeaderRefusedError(
                f"the leader at {self.address} refused the credentials: set PARADECOM_AUTH_TOKEN or --auth-token-file"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return LeaderUnavailableError(f"cannot reach the leader at {self.address} ({code.name.lower()})")
        return LeaderRefusedError(f"leader at {self.address}: {exc.details()}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """gRPC errors inside become LeaderError; `from None`, as the gRPC traceback says nothing more."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    async def _call(self, call: Awaitable[T]) -> T:
        """Await one RPC, its gRPC error made a LeaderError (a stream uses `_errors` instead)."""
        with self._errors():
            return await call

    async def submit(self, project: ProjectDefinition) -> str:
        resp = await self._call(
            self._stub.SubmitProject(
                project_service_pb2.SubmitProjectRequest(project=project.to_proto()),
                timeout=CALL_TIMEOUT_S, wait_for_ready=False,
            )
        )  # fmt: skip
        return resp.project_id

    async def get(self, project_id: str) -> project_pb2.ProjectSummary:
        resp = await self._call(
            self._stub.GetProject(project_service_pb2.GetProjectRequest(project_id=project_id), timeout=CALL_TIMEOUT_S)
        )
        return resp.project

    async def watch(self, project_id: str) -> AsyncIterator[project_pb2.ProjectSummary]:
        """Progress snapshots until the project leaves RUNNING."""
        with self._errors():
            async for event in self._stub.WatchProject(project_service_pb2.WatchProjectRequest(project_id=project_id)):
                yield event.project

    async def wait(
        self,
        project_id: str,
        on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
        reconnect_for_s: float = 60.0,
    ) -> project_pb2.ProjectSummary:
        """Follow the project until it ends. A leader restart in between is ridden out: the watch
        is reopened with backoff for up to `reconnect_for_s` seconds of unavailability."""
        delay, down_since = 0.2, None
        while True:
            try:
                async for summary in self.watch(project_id):
                    down_since = None
                    if on_progress:
                        on_progress(summary)
                    if summary.state in TERMINAL_STATES:
                        return summary
            except LeaderUnavailableError:
                loop = asyncio.get_running_loop()
                down_since = down_since or loop.time()
                if loop.time() - down_since > reconnect_for_s:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def tree(self, project_id: str) -> project_service_pb2.GetTaskTreeResponse:
        """The whole tree, nested, read in pages: a tree over the message limit reads all the same."""
        pages: list[project_service_pb2.GetTaskTreeResponse] = []
        token = ""
        while True:
            request = project_service_pb2.GetTaskTreeRequest(
                project_id=project_id, page_size=limits.MAX_TREE_PAGE_SIZE, page_token=token
            )
            page = await self._call(self._stub.GetTaskTree(request, timeout=CALL_TIMEOUT_S))
            pages.append(page)
            token = page.next_page_token
            if not token:
                return nested_tree(pages)

    async def cancel(self, project_id: str) -> project_pb2.ProjectSummary:
        resp = await self._call(
            self._stub.CancelProject(
                project_service_pb2.CancelProjectRequest(project_id=project_id), timeout=CALL_TIMEOUT_S
            )
        )
        return resp.project

    async def projects(self, limit: int) -> list[project_pb2.ProjectSummary]:
        """Up to `limit` projects, newest first (ListProjects, page by page)."""
        found: list[project_pb2.ProjectSummary] = []
        token = ""
        while len(found) < limit:
            request = project_service_pb2.ListProjectsRequest(page_size=min(limit - len(found), 1000), page_token=token)
            resp = await self._call(self._stub.ListProjects(request, timeout=CALL_TIMEOUT_S))
            found.extend(resp.projects)
            token = resp.next_page_token
            if not token:
                break
        return found[:limit]

    async def runners(self) -> list[admin_service_pb2.RunnerInfo]:
        """The runners the leader knows now: connected, or holding leases in their disconnect grace."""
        resp = await self._call(self._admin.ListRunners(admin_service_pb2.ListRunnersRequest(), timeout=CALL_TIMEOUT_S))
        return list(resp.runners)

    async def budget(self, rpm: int | None = None, tpm: int | None = None) -> admin_service_pb2.LlmBudget:
        """The leader's LLM budget; with rpm and/or tpm, change it first (the other keeps its value)."""
        current = (
            await self._call(self._admin.GetLlmBudget(admin_service_pb2.GetLlmBudgetRequest(), timeout=CALL_TIMEOUT_S))
        ).budget
        if rpm is None and tpm is None:
            return current
        request = admin_service_pb2.SetLlmBudgetRequest(
            requests_per_minute=current.requests_per_minute if rpm is None else rpm,
            tokens_per_minute=current.tokens_per_minute if tpm is None else tpm,
        )
        return (await self._call(self._admin.SetLlmBudget(request, timeout=CALL_TIMEOUT_S))).budget
