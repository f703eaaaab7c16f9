"""The leader process: store, lifecycle, scheduler and lease clock behind one grpc.aio server,
with health checking and reflection beside ParaDecom's own services, and an ordered drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from paradecom.errors import ConfigError
from paradecom.grpc_auth import TokenInterceptor, server_credentials
from paradecom.grpc_options import SERVER_OPTIONS, parse_address
from paradecom.logs import get_logger
from paradecom.runner.prompt import RequestSettings
from paradecom.security import Security, exposure_error
from paradecom.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)

from .core import DecompositionLeader
from .decode_guard import DecodeErrorInterceptor
from .lease_clock import LeaseClock
from .lifecycle import LeaseConfig
from .llm_budget import LlmBudget
from .parallelism import MachineProbe, Parallelism
from .scheduler import Scheduler
from .service import AdminService, ProjectService, TaskService
from .store import SqliteStore

if TYPE_CHECKING:
    from paradecom.metrics_server import MetricsServer

    from .metrics import LeaderMetrics

log = get_logger("paradecom.leader")

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# How long in-flight RPCs may finish after a stop signal before the server cancels them.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class LeaderSettings:
    listen: str
    db: str
    lease: LeaseConfig
    max_depth: int
    llm_rpm: int = 0
    llm_tpm: int = 0
    security: Security = field(default_factory=Security)
    metrics_listen: str = ""  # HOST:PORT for Prometheus' /metrics; "" serves none
    # Serve gRPC (and metrics) on an address other machines reach although no token is set; without
    # it such a leader refuses to start (paradecom.security.exposure_error).
    insecure: bool = False
    # A local auto run (`paradecom run --runners auto`): dispatch is held to leader/parallelism.py's
    # limit, with the endpoint's known slots and the caller's cap among its bounds.
    enforce_parallelism: bool = False
    endpoint_slots: int | None = None
    parallelism_cap: int | None = None
    # The LlmRequest every assignment carries: fan-out bounds, re-asks, answer profile.
    request: RequestSettings = field(default_factory=RequestSettings)


class LeaderServer:
    """A running leader. `start()` binds and serves; `stop()` drains and closes the store."""

    def __init__(self, settings: LeaderSettings) -> None:
        self.settings = settings
        self._check_exposure()
        try:
            store = SqliteStore(settings.db)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the store {settings.db}: {exc}") from None
        # The leader owns the store from here (and closes it): nothing else holds it.
        self.leader = DecompositionLeader(
            store, settings.lease, default_max_depth=settings.max_depth, request_settings=settings.request
        )
        budget = LlmBudget(settings.llm_rpm, settings.llm_tpm)
        parallelism = Parallelism(
            self.leader,
            budget,
            enforce=settings.enforce_parallelism,
            machine=MachineProbe() if settings.enforce_parallelism else None,
            endpoint_slots=settings.endpoint_slots,
            cap=settings.parallelism_cap,
        )
        self.scheduler = Scheduler(self.leader, budget, parallelism)
        self.clock = LeaseClock(self.leader)
        self.metrics: LeaderMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if settings.metrics_listen:
            # Imported only when asked for: aiohttp adds a quarter of a second to every start.
            from paradecom.metrics_server import MetricsServer

            from .metrics import LeaderMetrics

            self.metrics = LeaderMetrics(self.leader, self.scheduler)
            self.leader.observer = self.metrics
            # The token guards /metrics too: a scrape without it is answered 401.
            self.metrics_server = MetricsServer(
                settings.metrics_listen, self.metrics.registry, token=settings.security.token
            )
        self.health = health.aio.HealthServicer()
        token = settings.security.token
        # The token is checked first: a caller without it is refused UNAUTHENTICATED, bytes unread.
        interceptors: list[grpc.aio.ServerInterceptor] = [DecodeErrorInterceptor()]
        if token:
            interceptors.insert(0, TokenInterceptor(token))
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        self.port = 0
        self._background: list[asyncio.Task[None]] = []

    def _check_exposure(self) -> None:
        """Refuse (ConfigError) to serve gRPC or metrics on an address other machines can reach
        with no token, unless `insecure` says so; then warn on every start."""
        settings = self.settings
        token = settings.security.token
        for what, listen in (("gRPC", settings.listen), ("metrics", settings.metrics_listen)):
            if not listen:
                continue
            error = exposure_error(what, listen, token)
            if error is None:
                continue
            if not settings.insecure:
                raise ConfigError(error)
            log.warning(
                f"INSECURE: serving {what} on {listen} with no token (--insecure): anyone who can reach "
                "that address can use it"
            )

    async def start(self) -> str:
        renewed = self.leader.renew_all_leases()
        running = self.leader.running_project_count()
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(TaskService(self.leader, self.scheduler), self.server)
        project_service_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectService(self.leader), self.server)
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.leader, self.scheduler), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        host, _ = parse_address(self.settings.listen)
        try:
            creds = server_credentials(self.settings.security)
            if creds is None:
                self.port = self.server.add_insecure_port(self.settings.listen)
            else:
                self.port = self.server.add_secure_port(self.settings.listen, creds)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(f"cannot listen on {self.settings.listen}: address in use or not available")
        if self.metrics_server is not None:
            await self.metrics_server.start()
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._background = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.clock.run(), name="lease-clock"),
        ]
        address = f"{'[' + host + ']' if ':' in host else host}:{self.port}"
        log.info(
            "leader serving", address=address, db=self.settings.db, running_projects=running,
            leases_renewed=renewed, lease_timeout_s=self.settings.lease.lease_timeout_s,
            max_attempts=self.settings.lease.max_attempts, max_depth=self.settings.max_depth,
            llm_rpm=self.settings.llm_rpm, llm_tpm=self.settings.llm_tpm,
            auth="token" if self.settings.security.token else "none",
            tls="mutual" if self.settings.security.tls_ca else ("on" if self.settings.security.tls else "off"),
        )  # fmt: skip
        return address

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Drain: NOT_SERVING for probes, runners told to stop taking work, in-flight calls given
        `grace_s` to finish (their writes are committed before they answer), then close."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.scheduler.drain("leader shutting down")
        self.scheduler.end_streams()
        await self.server.stop(grace_s)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self.leader.close()
        log.info("leader stopped")


async def serve(settings: LeaderSettings) -> None:
    """Run a leader until SIGTERM or SIGINT, printing `listening HOST:PORT` on stdout once bound."""
    server = LeaderServer(settings)
    stop = asyncio.Event()
    started = False
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        address = await server.start()
        started = True
        print(f"listening {address}", flush=True)
        await stop.wait()
        log.info("stop signal received; draining")
    finally:
        if started:
            await server.stop()
        else:
            if server.metrics_server is not None:
                await server.metrics_server.stop()
            server.leader.close()
