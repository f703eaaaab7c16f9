"""`--metrics-listen HOST:PORT`: a Prometheus endpoint (`GET /metrics`) beside a leader or runner.

It is served by aiohttp on the process's own event loop, not by prometheus_client's thread server:
the leader's scrape-time collector reads its SQLite store, and the store is only ever touched from
the event loop's thread (see leader/store.py). Each process passes its own `CollectorRegistry`,
never the global one, so two leaders or runners in one process (tests, the Python API) keep their
numbers apart.

With a token (the leader's, when it has one), a scrape must carry `Authorization: Bearer <token>`
or is answered 401, as every gRPC call but health must carry it.

Once bound, the process prints one line `metrics HOST:PORT` on **stderr** (stdout carries only the
`listening HOST:PORT` line that scripts and tests parse), so a port 0 choice can be found.
"""

from __future__ import annotations

import hmac
import socket
import sys

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from paradecom.errors import ConfigError
from paradecom.grpc_options import parse_address
from paradecom.logs import get_logger

log = get_logger("paradecom.metrics")

METRICS_PATH = "/metrics"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """Serves `registry` at http://HOST:PORT/metrics until `stop()`."""

    def __init__(self, listen: str, registry: CollectorRegistry, *, token: str | None = None) -> None:
        self.listen = listen
        self.registry = registry
        # With a token, a scrape without `Authorization: Bearer <token>` is answered 401 (Prometheus:
        # `authorization: {credentials_file: ...}` in the scrape job).
        self._expected = f"Bearer {token}".encode() if token else None
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, self._expected):
                return web.Response(
                    status=401, text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"}
                )
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> str:
        """Bind and serve; returns HOST:PORT as bound (port 0 becomes the port chosen).
        Raises ConfigError when the address cannot be bound."""
        host, port = parse_address(self.listen)
        try:
            # Our own socket, so the port chosen for 0 is known without aiohttp's internals.
            sock = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, reuse_port=False
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.listen}: {exc.strerror or exc}") from None
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        # No access log: Prometheus scrapes every few seconds and each line would say the same.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.address = format_address(host, sock.getsockname()[1])
        log.info("metrics serving", address=self.address, path=METRICS_PATH)
        print(f"metrics {self.address}", file=sys.stderr, flush=True)
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
