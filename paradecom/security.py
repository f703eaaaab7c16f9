"""Who may talk to a leader: a shared bearer token and TLS (optionally mutual).

The leader checks `authorization: Bearer <token>` on every call except the health service's methods
(load balancers and orchestrators probe them without credentials), comparing in constant time; a
call without it is UNAUTHENTICATED whatever its method name, so an unknown method is not told apart
from a known one. Clients and runners send the token on every call through an interceptor.
Certificates are PEM files. A leader refuses to serve an address other machines can reach without a
token unless told `--insecure` (`exposure_error`).

Settings come from flags or the environment: PARADECOM_AUTH_TOKEN / --auth-token-file for the
token; --tls-cert/--tls-key (leader: its certificate; clients: theirs, for mutual TLS),
--tls-ca (clients: the CA that signed the leader's certificate; leader: the CA that signs client
certificates, which turns on mutual TLS).

This module holds the settings and the rules; what applies them to gRPC (the leader's interceptor,
the client's channel) is in paradecom/grpc_auth.py, so a command can read its flags without
loading grpc, before its first LLM request leaves (docs/performance.md, "Start-up").
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from paradecom.errors import ConfigError
from paradecom.grpc_options import parse_address

TOKEN_ENV = "PARADECOM_AUTH_TOKEN"
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class Security:
    """The credentials one process uses: a token, and TLS files (all optional)."""

    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_ca: bytes | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_ca is not None


def add_security_flags(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument(
        "--auth-token-file", metavar="PATH",
        help=f"file holding the shared bearer token (default: ${TOKEN_ENV}; none: no token)",
    )  # fmt: skip
    if server:
        parser.add_argument("--tls-cert", metavar="PEM", help="the leader's certificate (turns on TLS)")
        parser.add_argument("--tls-key", metavar="PEM", help="the leader's private key")
        parser.add_argument("--tls-ca", metavar="PEM", help="CA of client certificates: requires mutual TLS")
    else:
        parser.add_argument("--tls-ca", metavar="PEM", help="CA that signed the leader's certificate (turns on TLS)")
        parser.add_argument("--tls-cert", metavar="PEM", help="this client's certificate, for mutual TLS")
        parser.add_argument("--tls-key", metavar="PEM", help="this client's private key, for mutual TLS")


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{what} {path}: the file is empty")
    return data


def security_from_args(args: argparse.Namespace, *, server: bool) -> Security:
    """Read the token and TLS files named by the flags (or the environment); ConfigError if unusable."""
    token: str | None
    if args.auth_token_file:
        raw = _read(args.auth_token_file, "--auth-token-file") or b""
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            token = ""
        if not token or len(raw) > MAX_TOKEN_BYTES or "\n" in token:
            raise ConfigError(f"--auth-token-file {args.auth_token_file}: expected one line of text, at most 4 KiB")
    else:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.isprintable():
        raise ConfigError("the auth token must be printable text on one line")
    cert, key = _read(args.tls_cert, "--tls-cert"), _read(args.tls_key, "--tls-key")
    ca = _read(args.tls_ca, "--tls-ca")
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if server and ca is not None and cert is None:
        raise ConfigError("--tls-ca on the leader (mutual TLS) needs --tls-cert and --tls-key")
    if not server and cert is not None and ca is None:
        raise ConfigError("a client certificate (--tls-cert) needs --tls-ca, the CA of the leader's certificate")
    return Security(token=token, tls_cert=cert, tls_key=key, tls_ca=ca)


def is_loopback(host: str) -> bool:
    """Whether HOST (as --listen gives it, brackets removed) reaches this machine only: `localhost`
    or a loopback address. Any other name may resolve to a public address, so it counts as public."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def exposure_error(what: str, listen: str, token: str | None) -> str | None:
    """Why serving `what` on `listen` (HOST:PORT) must be refused unless the operator says
    `--insecure`: an address other machines can reach, and no token to check. None when it may."""
    host, _ = parse_address(listen)
    if token or is_loopback(host):
        return None
    return (
        f"refusing to serve {what} on {listen} without a token: anyone who can reach that address could "
        f"use it. Set a token (--auth-token-file PATH or ${TOKEN_ENV}), or pass --insecure to serve it "
        "open on purpose (only on a network you control)"
    )


def is_tls_failure(details: str | None) -> bool:
    """Whether a gRPC error's details point at a failed TLS handshake (untrusted or bad certificate)."""
    text = (details or "").lower()
    return any(word in text for word in ("ssl", "handshake", "certificate", "tls"))
