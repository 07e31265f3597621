"""Generated protobuf and gRPC stubs of the makima.v1 API (see scripts/gen_protos.py)."""
