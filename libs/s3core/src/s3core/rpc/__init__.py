"""gRPC edge of the platform: server bootstrap, error mapping, metrics, typed clients."""
