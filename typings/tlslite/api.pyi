# The parts of tlslite-ng (untyped) that netshim.tls uses.
import builtins
from collections.abc import Callable, Iterator
from typing import Any

class TLSError(Exception): ...
class TLSAbruptCloseError(TLSError): ...
class TLSAlert(TLSError): ...
class TLSLocalAlert(TLSAlert): ...
class TLSRemoteAlert(TLSAlert): ...
class TLSAuthenticationError(TLSError): ...

class HandshakeSettings:
    minVersion: tuple[int, int]
    maxVersion: tuple[int, int]
    def __init__(self) -> None: ...

class X509:
    bytes: bytearray
    publicKey: Any
    def __init__(self) -> None: ...
    # builtins.bytes: the attribute above shadows the name in this class.
    def parseBinary(self, cert_bytes: builtins.bytes | bytearray) -> None: ...

class X509CertChain:
    x509List: list[X509]

class TLSConnection:
    closed: bool
    version: tuple[int, int]
    session: Any
    _readBuffer: bytearray
    def __init__(self, sock: Any) -> None: ...
    def handshakeClientCert(
        self,
        certChain: Any = ...,
        privateKey: Any = ...,
        session: Any = ...,
        settings: HandshakeSettings | None = ...,
        checker: Callable[[TLSConnection], None] | None = ...,
        nextProtos: Any = ...,
        reqTack: bool = ...,
        serverName: str | None = ...,
        async_: bool = ...,
        alpn: list[bytes] | None = ...,
    ) -> Any: ...
    def readAsync(self, max: int | None = ..., min: int = ...) -> Iterator[Any]: ...
    def writeAsync(self, s: bytes | bytearray) -> Iterator[Any]: ...
    def closeAsync(self) -> Iterator[Any]: ...
    def getCipherName(self) -> str | None: ...
