"""TLS settings for reaching a coordinator and for serving a participant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import grpc

PathLike = Union[str, Path]


def _read(path: Optional[PathLike]) -> Optional[bytes]:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class ClientTls:
    """Reach ``https://`` coordinators: their certificate must chain to ``ca`` (PEM file); ``cert``
    and ``key`` (PEM files) are presented to a coordinator that requires client certificates."""

    ca: PathLike
    cert: Optional[PathLike] = None
    key: Optional[PathLike] = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; the files are read here."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: cert and key must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


@dataclass(frozen=True)
class ServerTls:
    """Serve a participant over TLS with ``cert`` and ``key`` (PEM files); with ``client_ca``,
    callers (the coordinators) must present a certificate that chains to it (mutual TLS)."""

    cert: PathLike
    key: PathLike
    client_ca: Optional[PathLike] = None

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials; the files are read here."""
        key, cert = _read(self.key), _read(self.cert)
        assert key is not None and cert is not None
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=_read(self.client_ca),
            require_client_auth=self.client_ca is not None,
        )
