"""Use cases of the service and their transactions. Never imports grpc."""
