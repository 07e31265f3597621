"""gRPC servicers: validate requests, call one domain use case, convert to protos. No SQL here."""
