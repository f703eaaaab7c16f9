"""Container health check for the leader: asks its `grpc.health.v1.Health` service for the overall
status ("" service) and exits 0 if SERVING, 1 otherwise (NOT_SERVING while it drains, no answer,
refused connection, TLS failure), printing one line on why.

The leader's health service needs no token, so no secret is read. Settings, all optional, from the
environment so that the image's HEALTHCHECK stays one fixed command:

- PARADECOM_HEALTH_ADDRESS: HOST:PORT to ask (default 127.0.0.1:50051, the leader in the same
  container);
- PARADECOM_HEALTH_TIMEOUT: seconds to wait for the answer (default 3);
- PARADECOM_HEALTH_TLS_CA: the CA that signed the leader's certificate; set it when the leader
  serves TLS (it then speaks nothing else);
- PARADECOM_HEALTH_TLS_SERVER_NAME: the name to check the certificate against, when it does not
  list the address dialled (a certificate made for "leader" probed on 127.0.0.1);
- PARADECOM_HEALTH_TLS_CERT and PARADECOM_HEALTH_TLS_KEY: a client certificate, when the leader
  requires mutual TLS.

Run it outside a container the same way: `python docker/healthcheck.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _read(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    return Path(path).read_bytes() if path else None


def channel(address: str) -> grpc.Channel:
    """A channel to `address`, with TLS when PARADECOM_HEALTH_TLS_CA is set."""
    ca = _read("PARADECOM_HEALTH_TLS_CA")
    if ca is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read("PARADECOM_HEALTH_TLS_KEY"),
        certificate_chain=_read("PARADECOM_HEALTH_TLS_CERT"),
    )
    name = os.environ.get("PARADECOM_HEALTH_TLS_SERVER_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, credentials, options=options)


def main() -> int:
    """Probe once; 0 if the leader is SERVING, 1 otherwise."""
    address = os.environ.get("PARADECOM_HEALTH_ADDRESS") or DEFAULT_ADDRESS
    try:
        timeout = float(os.environ.get("PARADECOM_HEALTH_TIMEOUT") or 3)
        with channel(address) as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {address}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address}: {status}", file=sys.stderr)
        return 1
    print(f"healthy: {address}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
