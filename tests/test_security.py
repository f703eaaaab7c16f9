"""Auth and TLS: a leader with a token lets in only callers that send it (health stays open), and
a leader with a certificate talks only TLS, mutual when it has a client CA. The CA and the
certificates are made by the test with openssl."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from helpers import Proc, run_cli

from paradecom.security import is_loopback
from paradecom.v1 import project_service_pb2, project_service_pb2_grpc

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
# gRPC call metadata: (key, value) pairs.
Metadata = tuple[tuple[str, str], ...]

TOKEN = "s3cret-token-for-tests-0123456789"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_cert(d: Path, ca: str, name: str) -> None:
    """A certificate for `name` (also valid for 127.0.0.1 and localhost) signed by `ca`."""
    (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "leader")
    make_cert(d, "ca", "client")
    return d


def project(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("name: X\ndescription: Y\n")
    return path


def test_token_required_except_for_health(start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path) -> None:
    """Without `authorization: Bearer <token>` every RPC is UNAUTHENTICATED; health answers anyway;
    the CLI with the token gets in; a wrong token gets a one-line error."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _, address = start_leader("--auth-token-file", str(token_file))
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=5, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchProject(project_service_pb2.WatchProjectRequest(project_id="x"), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=5,
                               metadata=(("authorization", f"Bearer {TOKEN}"),))  # fmt: skip
        assert list(ok.projects) == []

    submitted = run_cli([*PARADECOM, "submit", "--leader", address, str(project(tmp_path))],
                        env={"PARADECOM_AUTH_TOKEN": TOKEN})  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    refused = run_cli([*PARADECOM, "submit", "--leader", address, str(project(tmp_path))],
                      env={"PARADECOM_AUTH_TOKEN": "nope"})  # fmt: skip
    assert refused.returncode == 1 and "credentials" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and TOKEN not in refused.stderr


UNKNOWN_METHODS = (
    "/paradecom.v1.TaskService/NoSuchMethod",
    "/paradecom.v1.NoSuchService/Call",
    "/grpc.health.v1.Health/NoSuchMethod",
    "/x",
)


def raw_calls(channel: grpc.Channel, method: str) -> dict[str, Callable[[Metadata | None], object]]:
    """`method` called as each kind of call (bytes in, bytes out: no serializers), by kind."""
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    server_stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
    bidi: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
    return {
        "unary": lambda md: unary(b"", timeout=5, metadata=md),
        "server-stream": lambda md: list(server_stream(b"", timeout=5, metadata=md)),
        "bidi": lambda md: list(bidi(iter([b""]), timeout=5, metadata=md)),
    }


def test_unknown_methods_are_unauthenticated_without_the_token(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """With a token set, a call without it is UNAUTHENTICATED whatever the method name (unknown
    ones, of every call kind, and reflection), so an outsider cannot tell which methods exist; with
    the token an unknown method is UNIMPLEMENTED. Health's own methods stay open."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _, address = start_leader("--auth-token-file", str(token_file))
    good: Metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(address) as channel:
        for method in UNKNOWN_METHODS:
            for kind, call in raw_calls(channel, method).items():
                for metadata, expected in (
                    (None, grpc.StatusCode.UNAUTHENTICATED),
                    ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
                    ((("authorization", TOKEN),), grpc.StatusCode.UNAUTHENTICATED),
                    (good, grpc.StatusCode.UNIMPLEMENTED),
                ):
                    with pytest.raises(grpc.RpcError) as err:
                        call(metadata)
                    assert err.value.code() == expected, (method, kind, metadata)
        reflect: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            list(reflect(iter([request]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(reflect(iter([request]), timeout=5, metadata=good))
        assert answers and b"paradecom.v1.TaskService" in answers[0]
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_methods_are_unimplemented_without_a_token_set(
    start_leader: Callable[..., tuple[Proc, str]],
) -> None:
    """A leader with no token (on loopback) answers an unknown method UNIMPLEMENTED, as gRPC does."""
    _, address = start_leader()
    with grpc.insecure_channel(address) as channel:
        for method in UNKNOWN_METHODS:
            raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as err:
                raw(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, method


@pytest.mark.slow
def test_tls_and_mutual_tls(start_leader: Callable[..., tuple[Proc, str]], pki: Path, tmp_path: Path) -> None:
    """A TLS leader serves clients that trust its CA; an untrusting client gets a clear one-line
    error; with a client CA the leader also demands a client certificate."""
    tls = ["--tls-cert", str(pki / "leader.pem"), "--tls-key", str(pki / "leader.key")]
    _, address = start_leader(*tls)
    path = project(tmp_path)
    ok = run_cli([*PARADECOM, "submit", "--leader", address, "--tls-ca", str(pki / "ca.pem"), str(path)])
    assert ok.returncode == 0, ok.stderr
    untrusted = run_cli([*PARADECOM, "submit", "--leader", address, "--tls-ca", str(pki / "other-ca.pem"), str(path)])
    assert untrusted.returncode == 1 and "TLS handshake" in untrusted.stderr, untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1
    plaintext = run_cli([*PARADECOM, "submit", "--leader", address, str(path)])
    assert plaintext.returncode != 0

    _, mutual = start_leader(*tls, "--tls-ca", str(pki / "ca.pem"), db=tmp_path / "mutual.db")
    anonymous = run_cli([*PARADECOM, "submit", "--leader", mutual, "--tls-ca", str(pki / "ca.pem"), str(path)])
    assert anonymous.returncode != 0
    client_cert = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    with_cert = run_cli(
        [*PARADECOM, "submit", "--leader", mutual, "--tls-ca", str(pki / "ca.pem"), *client_cert, str(path)]
    )
    assert with_cert.returncode == 0, with_cert.stderr
    assert with_cert.stdout.strip()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "/nonexistent.pem"),
        (["--tls-cert", "{pki}/leader.pem"], "go together"),
        (["--auth-token-file", "/nonexistent-token"], "/nonexistent-token"),
    ],
)
def test_bad_security_flags(flags: list[str], needle: str, pki: Path) -> None:
    """Missing or half-given credentials are a one-line error, exit 2."""
    flags = [f.format(pki=pki) for f in flags]
    result = run_cli([sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", *flags])
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_runner_with_token_and_tls_does_the_work(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner with the token and the CA completes a project on a TLS + token leader; one that
    does not trust the leader's certificate, or has no token, stops at once with one clear line."""
    monkeypatch.setenv("PARADECOM_AUTH_TOKEN", TOKEN)
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "5")
    tls = ["--tls-cert", str(pki / "leader.pem"), "--tls-key", str(pki / "leader.key")]
    _, address = start_leader(*tls)
    start_runner(address, base_url, "--tls-ca", str(pki / "ca.pem"))
    path = tmp_path / "p.yaml"
    path.write_text("name: X\ndescription: Y\nmax_depth: 1\n")
    client = ["--leader", address, "--tls-ca", str(pki / "ca.pem")]
    project_id = run_cli([*PARADECOM, "submit", *client, str(path)]).stdout.strip()
    result = run_cli([*PARADECOM, "result", *client, project_id, "--wait"])
    assert result.returncode == 0, result.stderr
    assert "Y" in result.stdout

    untrusting = start_runner(address, base_url, "--tls-ca", str(pki / "other-ca.pem"))
    assert untrusting.wait(30) == 2
    assert "TLS handshake" in untrusting.stderr.splitlines()[-1]

    monkeypatch.setenv("PARADECOM_AUTH_TOKEN", "wrong")
    no_token = start_runner(address, base_url, "--tls-ca", str(pki / "ca.pem"))
    assert no_token.wait(30) == 2
    assert "credentials" in no_token.stderr.splitlines()[-1]


LEADER = [sys.executable, "-m", "paradecom.leader.main"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--listen", "0.0.0.0:0"],
        ["--listen", "[::]:0"],
        ["--listen", "leader.example:0"],
        ["--listen", "192.0.2.1:0"],
        ["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"],
        ["--listen", "127.0.0.1:0", "--metrics-listen", "[::]:0"],
    ],
)
def test_public_address_without_a_token_is_refused(flags: list[str], tmp_path: Path) -> None:
    """gRPC or metrics on an address other machines can reach, with no token: the leader refuses to
    start, exit 2, one line naming the address and both ways out (a token, or --insecure)."""
    result = run_cli(
        [*LEADER, *flags, "--db", str(tmp_path / "leader.db")], env={"PARADECOM_AUTH_TOKEN": ""}, timeout=20
    )
    exposed = flags[-1]
    what = "metrics" if "--metrics-listen" in flags else "gRPC"
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert f"refusing to serve {what} on {exposed} without a token" in line, line
    assert "--auth-token-file" in line and "PARADECOM_AUTH_TOKEN" in line and "--insecure" in line, line
    assert not (tmp_path / "leader.db").exists(), "refused before it opened the store"


def local(address: str) -> str:
    """The loopback address of a server that printed `0.0.0.0:PORT`."""
    return f"127.0.0.1:{address.rsplit(':', 1)[1]}"


def scrape(address: str, authorization: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{local(address)}/metrics")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_insecure_serves_a_public_address_with_a_loud_warning(
    start_leader: Callable[..., tuple[Proc, str]],
) -> None:
    """--insecure: the leader serves gRPC and metrics on 0.0.0.0 with no token, and says so on stderr
    for each of them."""
    proc, address = start_leader("--insecure", "--metrics-listen", "0.0.0.0:0", listen="0.0.0.0:0")
    metrics = proc.metrics_address()
    with grpc.insecure_channel(local(address)) as channel:
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        assert list(stub.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=5).projects) == []
    assert scrape(metrics)[0] == 200
    warnings = [line for line in proc.stderr_lines if "INSECURE" in line]
    assert any("serving gRPC on 0.0.0.0:0" in w for w in warnings), proc.stderr
    assert any("serving metrics on 0.0.0.0:0" in w for w in warnings), proc.stderr


def test_token_serves_a_public_address_and_guards_metrics(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """With a token the leader serves gRPC and metrics on 0.0.0.0 without a warning, and /metrics
    wants the token as gRPC does: 401 without it or with a wrong one, 200 with it."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc, address = start_leader("--auth-token-file", str(token_file), "--metrics-listen", "0.0.0.0:0",
                                 listen="0.0.0.0:0")  # fmt: skip
    metrics = proc.metrics_address()
    with grpc.insecure_channel(local(address)) as channel:
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        ok = stub.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=5,
                               metadata=(("authorization", f"Bearer {TOKEN}"),))  # fmt: skip
        assert list(ok.projects) == []
    for authorization in (None, "Bearer wrong", TOKEN, f"bearer {TOKEN}", f"Bearer {TOKEN}x"):
        status, body = scrape(metrics, authorization)
        assert status == 401 and "paradecom_" not in body, authorization
    status, body = scrape(metrics, f"Bearer {TOKEN}")
    assert status == 200 and "paradecom_tasks" in body
    assert not any("INSECURE" in line for line in proc.stderr_lines), proc.stderr


RUNNER = [sys.executable, "-m", "paradecom.runner.main"]


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"])
@pytest.mark.slow
def test_runner_metrics_on_a_public_address_without_a_token_are_refused(listen: str) -> None:
    """The leader's rule holds for a runner's metrics too: exit 2, one line, before it connects."""
    env = {"PARADECOM_AUTH_TOKEN": "", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    result = run_cli([*RUNNER, "--leader", "127.0.0.1:9", "--metrics-listen", listen], env=env, timeout=20)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert f"refusing to serve metrics on {listen} without a token" in line and "--insecure" in line, line


@pytest.mark.slow
def test_runner_metrics_want_the_token_it_has(
    start_leader: Callable[..., tuple[Proc, str]], fake_llm: Callable[..., str], tmp_path: Path
) -> None:
    """A runner with a token serves metrics on 0.0.0.0 and wants that token on every scrape; with
    --insecure and no token it serves them open and says so."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base_url = fake_llm()
    _, leader = start_leader("--auth-token-file", str(token_file))
    env = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k", "PARADECOM_AUTH_TOKEN": ""}
    guarded = Proc([*RUNNER, "--leader", leader, "--auth-token-file", str(token_file), "--metrics-listen", "0.0.0.0:0"],
                   env=env)  # fmt: skip
    open_ = Proc([*RUNNER, "--leader", "127.0.0.1:9", "--insecure", "--metrics-listen", "0.0.0.0:0"], env=env)
    try:
        metrics = guarded.metrics_address()
        assert scrape(metrics)[0] == 401 and scrape(metrics, "Bearer wrong")[0] == 401
        status, body = scrape(metrics, f"Bearer {TOKEN}")
        assert status == 200 and "paradecom_runner_" in body
        status, body = scrape(open_.metrics_address())
        assert status == 200 and "paradecom_runner_" in body
        assert any("INSECURE" in line for line in open_.stderr_lines), open_.stderr
    finally:
        guarded.stop()
        open_.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("::ffff:10.0.0.1", False), ("localhost.example", False), ("leader", False)],
)  # fmt: skip
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses and `localhost` count as private; any other name may be public."""
    assert is_loopback(host) is loopback
