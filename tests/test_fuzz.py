"""Fuzzing every RPC the leader serves with hypothesis: random field values (huge and empty strings,
unicode, NUL, negative and extreme numbers, NaN, unknown enum values, random and real ids, long
lists) against one real leader process. Every call must end with a status a client can act on,
never INTERNAL or UNKNOWN, and the leader must keep serving.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from helpers import Proc, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paradecom import limits
from paradecom.v1 import (
    admin_service_pb2,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)

# What a leader may answer to any request: done, or refused for a reason the caller can act on.
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A stream the leader accepted stays open until we give up reading it.
STREAM_READ_S = 0.3
EXAMPLES_PER_RPC = 50
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

SERVICES = [
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
# Health.Watch never ends by design; Health.List is not served by grpcio-health-checking's servicer.
METHODS = [
    m
    for s in SERVICES
    for m in s.methods
    if m.full_name not in ("grpc.health.v1.Health.Watch", "grpc.health.v1.Health.List")
]


@dataclass
class Target:
    """The leader under fuzz and real ids to mix into the random ones."""

    proc: Proc
    address: str
    channel: grpc.Channel
    ids: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One leader for the whole module, with a project, leased tasks and their tokens to aim at."""
    db = tmp_path_factory.mktemp("fuzz") / "leader.db"
    proc = Proc([sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", str(db),
                 "--log-format", "json", "--lease-timeout", "30"])  # fmt: skip
    try:
        address = proc.address()
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        t = Target(proc, address, channel)
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        seeds = [project_pb2.TaskSpec(title=f"Seed task {i}") for i in range(6)]
        for _ in range(2):
            resp = projects.SubmitProject(
                project_service_pb2.SubmitProjectRequest(
                    project=project_pb2.ProjectDefinition(name="Fuzz target", description="d", tasks=seeds)
                ),
                timeout=10,
            )
            t.ids.append(resp.project_id)
        stream = tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="fuzz-seed", max_in_flight=4))
        for _ in range(4):
            lease = next(stream).assignment.lease
            t.ids += [lease.task_id, lease.token]
        stream.cancel()
        yield t
        channel.close()
    finally:
        proc.stop()


def _text() -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


def string_strategy(real: list[str], huge: bool) -> st.SearchStrategy[str]:
    strategies = [
        _text(),
        st.sampled_from(real),
        st.sampled_from(
            [
                "",
                " ",
                "0",
                "-1",
                "1",
                "9" * 19,
                "1e9",
                "\x00",
                "\u202e",
                "é" * 101,
                "../../etc/passwd",
                "' OR 1=1 --",
                "%s%n",
                "\n\r\t",
            ]
        ),
    ]
    if huge:  # cheap to make: up to 2 MB
        strategies.append(st.integers(1_000, 2_000_000).map(lambda n: "y" * n))
    return st.one_of(*strategies)


INT_RANGES = {
    pb_descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def scalar_strategy(
    f: pb_descriptor.FieldDescriptor, real: list[str], depth: int, huge: bool, long: bool
) -> st.SearchStrategy[Any]:
    t = f.type
    if t == f.TYPE_STRING:
        return string_strategy(real, huge)
    if t == f.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == f.TYPE_BOOL:
        return st.booleans()
    if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
        return st.floats(width=64 if t == f.TYPE_DOUBLE else 32)
    if t == f.TYPE_ENUM:
        # proto3 enums are open: unknown numbers must be handled too.
        assert f.enum_type is not None
        return st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-(2**31), 2**31 - 1))
    if t in INT_RANGES:
        low, high = INT_RANGES[t]
        return st.one_of(
            st.integers(low, high),
            st.sampled_from([0, 1, -1, low, high, 2, 64, 1024, 1025]).filter(lambda v: low <= v <= high),
        )
    if t == f.TYPE_MESSAGE:
        assert f.message_type is not None
        return message_strategy(f.message_type, real, depth + 1, huge, long)
    raise AssertionError(f"no strategy for field {f.full_name} of type {t}")


def message_strategy(
    d: pb_descriptor.Descriptor, real: list[str], depth: int = 0, huge: bool = True, long: bool = True
) -> st.SearchStrategy[Any]:
    """Messages of type `d` with any subset of fields set to random values: strings up to 2 MB
    (`huge`), lists short or now and then tens of thousands long (`long`), though never both at
    once and never a long list inside a long list, so a request stays within tens of MB."""
    cls = message_factory.GetMessageClass(d)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in d.fields:
        if f.type == f.TYPE_MESSAGE and depth >= 3:
            continue
        value = scalar_strategy(f, real, depth, huge, long)
        if f.is_repeated:
            lists = [st.lists(value, max_size=4)]
            if long:
                small = scalar_strategy(f, real, depth, huge=False, long=False)
                lists.append(st.tuples(small, st.integers(20, 25_000)).map(lambda pair: [pair[0]] * pair[1]))
            value = st.one_of(*lists)
        fields[f.name] = value

    def build(values: dict[str, Any]) -> pb_message.Message:
        msg = cls()
        for name, value in values.items():
            f = d.fields_by_name[name]
            if f.is_repeated:
                getattr(msg, name).extend(value)
            elif f.type == f.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


def call(channel: grpc.Channel, method: pb_descriptor.MethodDescriptor, request: Any) -> grpc.StatusCode:
    """Make the call; the status it ended with (a stream the leader kept open counts as OK)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    serialize = type(request).SerializeToString
    if method.server_streaming:
        stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=response_cls.FromString)
        responses = stream(request, timeout=STREAM_READ_S)
        try:
            next(responses)
        except StopIteration:
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            # Our own read deadline on a stream the leader accepted is not the leader's answer.
            return grpc.StatusCode.OK if code == grpc.StatusCode.DEADLINE_EXCEEDED else code
        finally:
            responses.cancel()
        return grpc.StatusCode.OK
    unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=response_cls.FromString)
    try:
        unary(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def assert_serving(t: Target) -> None:
    assert t.proc.popen.poll() is None, f"the leader died:\n{t.proc.stderr[-3000:]}"
    health = health_pb2_grpc.HealthStub(t.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    assert '"unexpected error"' not in t.proc.stderr, t.proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_rpc_answers_random_requests_with_a_proper_status(
    target: Target, method: pb_descriptor.MethodDescriptor
) -> None:
    """Random requests to one RPC (any field set to anything, real ids mixed in) each end with OK,
    INVALID_ARGUMENT, NOT_FOUND, ABORTED, FAILED_PRECONDITION or RESOURCE_EXHAUSTED, never
    INTERNAL or UNKNOWN; afterwards the leader still answers its health check SERVING."""
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        request = data.draw(message_strategy(method.input_type, target.ids), label="request")
        code = call(target.channel, method, request)
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code in ACCEPTABLE, f"{method.name} answered {code.name} to {str(request)[:500]!r}"

    fuzz()
    assert_serving(target)
    print(f"{method.name}: {json.dumps(seen)}")


def test_message_over_the_size_limit_is_resource_exhausted(target: Target) -> None:
    """A SubmitProject of more than the 64 MiB message limit is refused RESOURCE_EXHAUSTED, and the
    leader goes on serving."""
    huge = project_pb2.ProjectDefinition(name="Too big", description="z" * (limits.MAX_MESSAGE_BYTES + 1024))
    stub = project_service_pb2_grpc.ProjectServiceStub(target.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitProject(project_service_pb2.SubmitProjectRequest(project=huge), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(target)


def test_project_text_with_nul_and_unicode_round_trips(target: Target) -> None:
    """NUL characters, right-to-left marks and astral-plane characters in a project are stored and
    read back unchanged (SQLite text columns must not cut strings at NUL)."""
    name = "Fuzz \x00 name \u202e\U0001f600"
    description = "line1\x00line2 \u0000 end é"
    stub = project_service_pb2_grpc.ProjectServiceStub(target.channel)
    project_id = stub.SubmitProject(
        project_service_pb2.SubmitProjectRequest(
            project=project_pb2.ProjectDefinition(name=name, description=description)
        ),
        timeout=10,
    ).project_id
    tree = stub.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=project_id), timeout=10)
    assert tree.project.name == name
    assert tree.definition.description == description
    assert tree.tasks[0].title == name


def _unary_methods() -> list[pb_descriptor.MethodDescriptor]:
    return [m for m in METHODS if not m.server_streaming and m.input_type.fields]


CORRUPT = b"\xff\xff\xff\xff"  # field 31, wire type 7: no such wire type, so never a valid message


@pytest.mark.parametrize("method", _unary_methods(), ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_corrupt_request_bytes_are_invalid_argument(target: Target, method: pb_descriptor.MethodDescriptor) -> None:
    """Bytes that are not a valid protobuf of the request type get INVALID_ARGUMENT with a one-line
    message naming the type, not UNKNOWN (grpc's own answer to a failed request decode)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw: Callable[..., Any] = target.channel.unary_unary(path)  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        raw(CORRUPT, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert method.input_type.full_name in details and "\n" not in details, details
    wait_for(lambda: target.proc.popen.poll() is None, what="the leader to be alive")


# Every server-streaming RPC, Health.Watch included: the request is decoded before the stream starts.
STREAMING_METHODS = [m for s in SERVICES for m in s.methods if m.server_streaming and not m.client_streaming]


@pytest.mark.parametrize("method", STREAMING_METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_corrupt_request_bytes_to_a_stream_are_invalid_argument(
    target: Target, method: pb_descriptor.MethodDescriptor
) -> None:
    """A server-streaming call (PullTask, WatchProject, Health.Watch) opened with corrupt request
    bytes ends at once with INVALID_ARGUMENT, before any response."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw: Callable[..., Any] = target.channel.unary_stream(path)
    with pytest.raises(grpc.RpcError) as err:
        next(iter(raw(CORRUPT, timeout=10)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert_serving(target)


def test_corrupt_message_in_a_bidi_stream_is_invalid_argument(target: Target) -> None:
    """Server reflection's bidirectional stream: a valid request is answered, and a corrupt one
    after it ends the stream with INVALID_ARGUMENT (each message is checked as it is read)."""
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    valid = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    raw: Callable[..., Any] = target.channel.stream_stream(path)
    responses = raw(iter([valid, CORRUPT]), timeout=10)
    first = reflection_pb2.ServerReflectionResponse.FromString(next(responses))
    assert first.list_services_response.service
    with pytest.raises(grpc.RpcError) as err:
        next(responses)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert_serving(target)


def test_corrupt_request_without_the_token_is_unauthenticated(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """With a token set, corrupt bytes without the token are UNAUTHENTICATED (the token is checked
    before the request is decoded), and the same bytes with the token are INVALID_ARGUMENT."""
    token_file = tmp_path / "token"
    token_file.write_text("fuzz-token-0123456789\n")
    _, address = start_leader("--auth-token-file", str(token_file))
    with grpc.insecure_channel(address) as channel:
        raw: Callable[..., Any] = channel.unary_unary("/paradecom.v1.ProjectService/SubmitProject")
        for metadata, expected in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            ([("authorization", "Bearer wrong")], grpc.StatusCode.UNAUTHENTICATED),
            ([("authorization", "Bearer fuzz-token-0123456789")], grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as err:
                raw(CORRUPT, metadata=metadata, timeout=10)
            assert err.value.code() == expected, err.value.details()
        stream: Callable[..., Any] = channel.unary_stream("/paradecom.v1.TaskService/PullTask")
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stream(CORRUPT, timeout=10)))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()


def test_leader_log_has_no_unexpected_error(target: Target) -> None:
    """After all the fuzzing above, the leader never logged an unexpected error (an INTERNAL)."""
    assert_serving(target)
