"""Optional TLS for the platform's gRPC: server credentials from mounted files, and the one channel factory.

Server side (every service: :func:`s3core.rpc.server.start_server` calls :func:`server_credentials`)::

    S3_TLS_CERT_FILE       PEM certificate chain of the server         } both, or neither (plaintext)
    S3_TLS_KEY_FILE        PEM private key of that certificate          }
    S3_TLS_CLIENT_CA_FILE  PEM CA bundle: clients must present a certificate it signed (mTLS)

Client side (:func:`open_channel`, used by every typed client -- ``s3core.rpc.clients`` -- and by
anything else that dials a service)::

    S3_TLS_CA_FILE           PEM CA bundle the server's certificate is verified against: set = TLS
    S3_TLS_CLIENT_CERT_FILE  the client's certificate chain for mTLS    } both, or neither
    S3_TLS_CLIENT_KEY_FILE   its private key                            }
    S3_TLS_SERVER_NAME       host name checked in the server's certificate instead of the dialled one

The files are what a Kubernetes ``kubernetes.io/tls`` Secret mounts (``tls.crt``, ``tls.key``,
``ca.crt``); they are read when a server starts or a channel is opened (no reload: a rotated
certificate takes effect on the next restart, or the next channel).  A half-configured pair, an
unreadable or empty file is an :class:`~s3core.errors.InvalidArgument` naming the variable and the
path -- never the content.  Nothing configured = plaintext, as before.

Health: the gRPC health service is on the same (TLS) port, which Kubernetes' built-in ``grpc``
probes cannot reach (they speak plaintext).  Probes use the HTTP side-server's ``/healthz``
instead (same readiness as the gRPC health status; plaintext, on the ``http`` port with
``/metrics``) -- see docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from s3core.errors import InvalidArgument

logger = logging.getLogger(__name__)

__all__ = [
    "CA_FILE_ENV",
    "CERT_FILE_ENV",
    "CLIENT_CA_FILE_ENV",
    "CLIENT_CERT_FILE_ENV",
    "CLIENT_KEY_FILE_ENV",
    "KEY_FILE_ENV",
    "SERVER_NAME_ENV",
    "ClientTLS",
    "ServerTLS",
    "add_port",
    "client_tls",
    "open_aio_channel",
    "open_channel",
    "server_credentials",
    "server_tls",
]

CERT_FILE_ENV = "S3_TLS_CERT_FILE"
KEY_FILE_ENV = "S3_TLS_KEY_FILE"
CLIENT_CA_FILE_ENV = "S3_TLS_CLIENT_CA_FILE"
CA_FILE_ENV = "S3_TLS_CA_FILE"
CLIENT_CERT_FILE_ENV = "S3_TLS_CLIENT_CERT_FILE"
CLIENT_KEY_FILE_ENV = "S3_TLS_CLIENT_KEY_FILE"
SERVER_NAME_ENV = "S3_TLS_SERVER_NAME"

Options = Sequence[tuple[str, Any]]


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _read(var: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{var}={path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise InvalidArgument(f"{var}={path} is empty")
    return data


def _pair(cert_var: str, cert: str, key_var: str, key: str) -> tuple[bytes, bytes] | None:
    if bool(cert) != bool(key):
        have, missing = (cert_var, key_var) if cert else (key_var, cert_var)
        raise InvalidArgument(f"{have} is set but {missing} is not: a certificate needs its private key")
    if not cert:
        return None
    return _read(cert_var, cert), _read(key_var, key)


# --- server side ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerTLS:
    """Where a server's certificate, key and (mTLS) client CA come from; empty = plaintext."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @classmethod
    def from_env(cls) -> "ServerTLS":
        return cls(_env(CERT_FILE_ENV), _env(KEY_FILE_ENV), _env(CLIENT_CA_FILE_ENV))

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file or self.client_ca_file)

    @property
    def mode(self) -> str:
        """"plaintext", "tls" or "mtls" (for logs)."""
        return "mtls" if self.client_ca_file else "tls" if self.enabled else "plaintext"

    def credentials(self) -> grpc.ServerCredentials | None:
        """``grpc.ssl_server_credentials`` for these files (read now), or None when TLS is off."""
        pair = _pair(CERT_FILE_ENV, self.cert_file, KEY_FILE_ENV, self.key_file)
        if pair is None:
            if self.client_ca_file:
                raise InvalidArgument(f"{CLIENT_CA_FILE_ENV} is set but {CERT_FILE_ENV} / {KEY_FILE_ENV} are not: "
                                      "client certificates need a TLS server")
            return None
        cert, key = pair
        ca = _read(CLIENT_CA_FILE_ENV, self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def server_tls() -> ServerTLS:
    """The server TLS settings of ``$S3_TLS_CERT_FILE`` / ``$S3_TLS_KEY_FILE`` / ``$S3_TLS_CLIENT_CA_FILE``."""
    return ServerTLS.from_env()


def server_credentials() -> grpc.ServerCredentials | None:
    """Server credentials from the environment, or None (plaintext)."""
    return server_tls().credentials()


def add_port(server: Any, bind: str, tls: ServerTLS | None = None) -> int:
    """Bind ``server`` (sync or aio) on ``bind`` with TLS when configured, else plaintext; the port."""
    creds = (tls if tls is not None else server_tls()).credentials()
    if creds is None:
        return int(server.add_insecure_port(bind))
    return int(server.add_secure_port(bind, creds))


# --- client side ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientTLS:
    """What a client verifies the server with (``ca_file``), and its own certificate for mTLS."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    @classmethod
    def from_env(cls) -> "ClientTLS":
        return cls(_env(CA_FILE_ENV), _env(CLIENT_CERT_FILE_ENV), _env(CLIENT_KEY_FILE_ENV), _env(SERVER_NAME_ENV))

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.enabled:
            return None
        if not self.ca_file:
            raise InvalidArgument(f"{CLIENT_CERT_FILE_ENV} / {CLIENT_KEY_FILE_ENV} are set but {CA_FILE_ENV} is not: "
                                  "set the CA that signed the servers' certificates")
        ca = _read(CA_FILE_ENV, self.ca_file)
        pair = _pair(CLIENT_CERT_FILE_ENV, self.cert_file, CLIENT_KEY_FILE_ENV, self.key_file)
        cert, key = pair if pair is not None else (None, None)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def options(self, options: Options | None) -> list[tuple[str, Any]]:
        opts = list(options or ())
        if self.enabled and self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts


def client_tls() -> ClientTLS:
    """The client TLS settings of ``$S3_TLS_CA_FILE`` / ``$S3_TLS_CLIENT_*`` / ``$S3_TLS_SERVER_NAME``."""
    return ClientTLS.from_env()


def open_channel(address: str, options: Options | None = None, tls: ClientTLS | None = None) -> grpc.Channel:
    """A channel to ``address``: ``grpc.secure_channel`` when TLS is configured (``tls``, else the
    environment), else ``grpc.insecure_channel``.  ``options`` are the usual grpc channel options."""
    cfg = tls if tls is not None else client_tls()
    creds = cfg.credentials()
    if creds is None:
        return grpc.insecure_channel(address, options=list(options or ()))
    return grpc.secure_channel(address, creds, options=cfg.options(options))


def open_aio_channel(address: str, options: Options | None = None, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """:func:`open_channel` for ``grpc.aio``."""
    cfg = tls if tls is not None else client_tls()
    creds = cfg.credentials()
    if creds is None:
        return grpc.aio.insecure_channel(address, options=list(options or ()))
    return grpc.aio.secure_channel(address, creds, options=cfg.options(options))
