"""Domain errors.  No gRPC status codes here: the RPC edge (``s3core.rpc``) maps them."""

from __future__ import annotations


class S3Error(Exception):
    """Base class of every error the platform raises on purpose."""


class InvalidArgument(S3Error):
    """A caller sent something malformed or out of range (gRPC ``INVALID_ARGUMENT``)."""


class NotFound(S3Error):
    """A named thing (index, model, job, file) does not exist (gRPC ``NOT_FOUND``)."""


class Unavailable(S3Error):
    """A dependency (service, Redis) cannot be reached right now (gRPC ``UNAVAILABLE``)."""


class ResourceExhausted(Unavailable):
    """The server is overloaded right now (gRPC ``RESOURCE_EXHAUSTED``): transient, so retry layers that
    retry :class:`Unavailable` retry it too, with their backoff."""


class FailedPrecondition(S3Error):
    """The request is well-formed but the system is not in the state it requires, e.g. a rollout that
    expects policy version 3 while version 4 is served (gRPC ``FAILED_PRECONDITION``)."""


class ConfigError(InvalidArgument):
    """A configuration file or value is invalid; raised before any work starts."""


class DataError(InvalidArgument):
    """A data file is malformed.  Carries the file and 1-based line number."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
