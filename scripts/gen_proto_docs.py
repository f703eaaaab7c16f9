"""Write docs/proto.md, the reference of the paradecom.v1 contract, from the comments in
proto/paradecom/v1/*.proto: every service and RPC, message and field, enum and value.

The files are compiled with the pinned protoc of grpcio-tools (the `dev` extra) with their source
info, so the comments are the compiler's, not a second parser's. `--check` exits 1 when
docs/proto.md differs from what this script makes (`make proto-check` and
tests/test_proto_lint.py::test_proto_reference_is_up_to_date run it). `make proto` runs it after the
stubs' generator; run that after editing a .proto file.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "docs" / "proto.md"
PACKAGE = "paradecom.v1"

# Field numbers in descriptor.proto, the steps of a SourceCodeInfo.Location path.
_FILE_PACKAGE, _FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 2, 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def compile_protos() -> descriptor_pb2.FileDescriptorSet:
    """Every proto/paradecom/v1/*.proto, compiled with its comments (source info)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "paradecom" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_source_info",
                f"--descriptor_set_out={out}", *protos]  # fmt: skip
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@dataclass
class Comments:
    """The comments of one file's elements, by their source path."""

    by_path: dict[tuple[int, ...], str]

    @classmethod
    def of(cls, f: descriptor_pb2.FileDescriptorProto) -> Comments:
        by_path = {}
        for loc in f.source_code_info.location:
            text = "\n".join(c for c in (loc.leading_comments, loc.trailing_comments) if c.strip())
            if text:
                by_path[tuple(loc.path)] = text
        return cls(by_path)

    def get(self, *path: int) -> str:
        return self.by_path.get(path, "")


def paragraphs(comment: str) -> list[str]:
    """A comment's paragraphs, each unwrapped to one line."""
    lines = [line.strip() for line in comment.splitlines()]
    blocks = "\n".join(lines).split("\n\n")
    return [" ".join(block.split()) for block in blocks if block.strip()]


def cell(comment: str) -> str:
    """A comment as one Markdown table cell: paragraphs on one line, `|` escaped, and `<` outside
    code spans written as an entity so that it is not taken for HTML."""
    text = "<br><br>".join(_escape_html(p) for p in paragraphs(comment)).replace("|", "\\|")
    return text or "—"


def block(comment: str) -> list[str]:
    """A comment as Markdown paragraphs."""
    out: list[str] = []
    for p in paragraphs(comment):
        out += [_escape_html(p), ""]
    return out


def _escape_html(text: str) -> str:
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def short(type_name: str) -> str:
    """`.paradecom.v1.Task` -> `Task`; types of other packages keep their full name."""
    name = type_name.lstrip(".")
    return name.removeprefix(PACKAGE + ".")


def anchor(name: str) -> str:
    """The anchor GitHub gives a `### name` heading."""
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


def type_link(type_name: str, local: set[str]) -> str:
    name = short(type_name)
    return f"[`{name}`](#{anchor(name)})" if name in local else f"`{name}`"


@dataclass
class Message:
    name: str
    file: str
    proto: descriptor_pb2.DescriptorProto
    path: tuple[int, ...]
    comments: Comments


@dataclass
class Enum:
    name: str
    file: str
    proto: descriptor_pb2.EnumDescriptorProto
    path: tuple[int, ...]
    comments: Comments


def walk_messages(
    messages: Sequence[descriptor_pb2.DescriptorProto], prefix: str, path: tuple[int, ...], f: str, c: Comments
) -> Iterator[Message | Enum]:
    """Messages and the enums declared in them, nested ones after their parent, in file order."""
    for i, m in enumerate(messages):
        if m.options.map_entry:
            continue
        name, here = f"{prefix}{m.name}", (*path, i)
        yield Message(name, f, m, here, c)
        for j, e in enumerate(m.enum_type):
            yield Enum(f"{name}.{e.name}", f, e, (*here, _MESSAGE_ENUM, j), c)
        yield from walk_messages(m.nested_type, f"{name}.", (*here, _MESSAGE_NESTED), f, c)


def field_type(field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, str], local: set[str]) -> str:
    if field.type_name and short(field.type_name) in maps:
        return maps[short(field.type_name)]
    base = type_link(field.type_name, local) if field.type_name else f"`{_SCALARS[field.type]}`"
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {base}"
    if field.proto3_optional:
        return f"optional {base}"
    return base


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    """docs/proto.md's text."""
    services: list[tuple[str, descriptor_pb2.ServiceDescriptorProto, int, Comments]] = []
    items: list[Message | Enum] = []
    file_notes: list[tuple[str, str]] = []
    for f in files.file:
        if f.package != PACKAGE:
            continue
        c = Comments.of(f)
        file_notes.append((f.name, c.get(_FILE_PACKAGE)))
        services += [(f.name, s, i, c) for i, s in enumerate(f.service)]
        items += walk_messages(f.message_type, "", (_FILE_MESSAGE,), f.name, c)
        items += [Enum(e.name, f.name, e, (_FILE_ENUM, i), c) for i, e in enumerate(f.enum_type)]
    messages = [m for m in items if isinstance(m, Message)]
    enums = [e for e in items if isinstance(e, Enum)]
    local = {m.name for m in messages} | {e.name for e in enums}
    # Map fields are messages the compiler made (`XEntry`): shown as map<K, V>.
    maps: dict[str, str] = {}
    for m in messages:
        for nested in m.proto.nested_type:
            if nested.options.map_entry:
                key, value = nested.field
                v = type_link(value.type_name, local) if value.type_name else f"`{_SCALARS[value.type]}`"
                maps[f"{m.name}.{nested.name}"] = f"map&lt;`{_SCALARS[key.type]}`, {v}&gt;"

    out = [
        f"# `{PACKAGE}` reference",
        "",
        "<!-- Generated by scripts/gen_proto_docs.py from the comments in proto/paradecom/v1/*.proto:",
        "     edit those, then run `make proto`. -->",
        "",
        "Every service, RPC, message, field and enum of ParaDecom's gRPC contract, in the words of the",
        "`.proto` files' comments. The leader serves the services on one port, beside",
        "`grpc.health.v1.Health` and server reflection.",
        "",
    ]
    for _, note in file_notes:
        out += block(note)
    out += ["| file | defines |", "| --- | --- |"]
    for name, _ in file_notes:
        defined = [s.name for f_name, s, _, _ in services if f_name == name]
        defined += [x.name for x in items if x.file == name]
        out.append(f"| `proto/{name}` | {', '.join(f'[`{d}`](#{anchor(d)})' for d in defined)} |")
    out += ["", "## Services", ""]
    for file_name, s, i, c in services:
        out += [f"### {s.name}", "", f"`{PACKAGE}.{s.name}`, in `proto/{file_name}`.", ""]
        out += block(c.get(_FILE_SERVICE, i))
        out += ["| RPC | request | response | what it does |", "| --- | --- | --- | --- |"]
        for j, rpc in enumerate(s.method):
            request = ("stream " if rpc.client_streaming else "") + type_link(rpc.input_type, local)
            response = ("stream " if rpc.server_streaming else "") + type_link(rpc.output_type, local)
            out.append(
                f"| `{rpc.name}` | {request} | {response} | {cell(c.get(_FILE_SERVICE, i, _SERVICE_METHOD, j))} |"
            )
        out.append("")
    out += ["## Messages", ""]
    for m in messages:
        out += [f"### {m.name}", "", f"In `proto/{m.file}`.", ""]
        out += block(m.comments.get(*m.path))
        for k, oneof in enumerate(m.proto.oneof_decl):
            members = [f"`{fld.name}`" for fld in m.proto.field if fld.HasField("oneof_index") and fld.oneof_index == k]
            if any(
                fld.proto3_optional for fld in m.proto.field if fld.HasField("oneof_index") and fld.oneof_index == k
            ):
                continue  # the compiler's oneof of a proto3 `optional` field
            note = " ".join(paragraphs(m.comments.get(*m.path, _MESSAGE_ONEOF, k)))
            out += [f"`{oneof.name}` is one of {', '.join(members)}: {_escape_html(note)}".rstrip(": "), ""]
        if not m.proto.field:
            out += ["No fields.", ""]
            continue
        out += ["| field | number | type | meaning |", "| --- | --- | --- | --- |"]
        for k, fld in enumerate(m.proto.field):
            note = cell(m.comments.get(*m.path, _MESSAGE_FIELD, k))
            if fld.HasField("oneof_index") and not fld.proto3_optional:
                note = f"One of `{m.proto.oneof_decl[fld.oneof_index].name}`. {note}"
            type_text = field_type(fld, maps, local)
            out.append(f"| `{fld.name}` | {fld.number} | {type_text} | {note} |")
        out.append("")
    out += ["## Enums", ""]
    for e in enums:
        out += [f"### {e.name}", "", f"In `proto/{e.file}`.", ""]
        out += block(e.comments.get(*e.path))
        out += ["| value | number | meaning |", "| --- | --- | --- |"]
        for k, enum_value in enumerate(e.proto.value):
            note = cell(e.comments.get(*e.path, _ENUM_VALUE, k))
            out.append(f"| `{enum_value.name}` | {enum_value.number} | {note} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/proto.md is not up to date")
    args = parser.parse_args()
    text = render(compile_protos())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print("docs/proto.md is stale: run .venv/bin/python scripts/gen_proto_docs.py", file=sys.stderr)
            raise SystemExit(1)
        return
    OUTPUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
