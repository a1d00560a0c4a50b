"""Generated protobuf and gRPC stubs for baton.v1 (see scripts/gen_proto.py)."""
