"""Generated protobuf and gRPC stubs for paradecom.v1 (made by scripts/gen_protos.py)."""
