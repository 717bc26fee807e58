"""X.509 for the pure-Python TLS backend: reading certificates, checking chains and names.

tlslite-ng checks that the server holds the key of the certificate it sent,
but not who vouches for that certificate.  This module does the rest with no
``cryptography`` (Pyodide may lack it offline): a small DER reader for the
fields a chain check needs, signatures verified with tlslite-ng's own
pure-Python RSA and ECDSA code, validity periods, ``basicConstraints`` on
issuers and the server name against ``subjectAltName`` (no common-name
fallback, as CPython's ``ssl`` since 3.10).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "Certificate",
    "CertificateError",
    "match_hostname",
    "pem_to_der_list",
    "verify_chain",
]


class CertificateError(Exception):
    """A certificate chain or name that does not check out; the message says why."""


# -- DER ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    tag: int
    content: bytes
    encoded: bytes

    def children(self) -> list[_Node]:
        return _read_all(self.content)


def _read(data: bytes, offset: int) -> tuple[_Node, int]:
    if offset + 2 > len(data):
        raise CertificateError("truncated DER")
    tag = data[offset]
    length = data[offset + 1]
    position = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or position + count > len(data):
            raise CertificateError("unsupported DER length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    end = position + length
    if end > len(data):
        raise CertificateError("truncated DER")
    return _Node(tag, data[position:end], data[offset:end]), end


def _read_all(data: bytes) -> list[_Node]:
    nodes = []
    offset = 0
    while offset < len(data):
        node, offset = _read(data, offset)
        nodes.append(node)
    return nodes


def _oid(content: bytes) -> str:
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _time(node: _Node) -> datetime.datetime:
    text = node.content.decode("ascii")
    if node.tag == 0x17:  # UTCTime: two-digit years, 50-99 meaning 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)


# The attribute names CPython's getpeercert() uses for distinguished names.
_NAME_OIDS = {
    "2.5.4.3": "commonName",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "1.2.840.113549.1.9.1": "emailAddress",
}

# signatureAlgorithm OIDs tlslite-ng's keys can check: (key type, hash).
_SIGNATURES = {
    "1.2.840.113549.1.1.5": ("rsa", "sha1"),
    "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "1.2.840.10045.4.3.2": ("ecdsa", "sha256"),
    "1.2.840.10045.4.3.3": ("ecdsa", "sha384"),
    "1.2.840.10045.4.3.4": ("ecdsa", "sha512"),
}


@dataclass
class Certificate:
    """The parts of one DER certificate that checking and ``getpeercert()`` use."""

    der: bytes
    tbs: bytes
    signature_oid: str
    signature: bytes
    serial: int
    issuer: bytes
    subject: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime
    is_ca: bool = False
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[str] = field(default_factory=list)

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        try:
            top, _ = _read(der, 0)
            tbs_node, algorithm, signature = top.children()
            fields = tbs_node.children()
            if fields[0].tag == 0xA0:  # the explicit version is optional (v1)
                fields = fields[1:]
            serial, _alg, issuer, validity, subject, _spki, *rest = fields
            not_before, not_after = validity.children()
            certificate = cls(
                der=bytes(der),
                tbs=tbs_node.encoded,
                signature_oid=_oid(algorithm.children()[0].content),
                # A BIT STRING: its first byte counts unused bits, always 0 here.
                signature=signature.content[1:],
                serial=int.from_bytes(serial.content, "big"),
                issuer=issuer.encoded,
                subject=subject.encoded,
                not_before=_time(not_before),
                not_after=_time(not_after),
            )
            for node in rest:
                if node.tag == 0xA3:  # [3] extensions
                    certificate._read_extensions(node.children()[0])
            return certificate
        except (ValueError, IndexError) as error:
            raise CertificateError(f"cannot parse the certificate: {error}") from None

    def _read_extensions(self, extensions: _Node) -> None:
        for extension in extensions.children():
            parts = extension.children()
            oid = _oid(parts[0].content)
            value = _read(parts[-1].content, 0)[0]
            if oid == "2.5.29.17":  # subjectAltName
                for name in value.children():
                    if name.tag == 0x82:
                        self.dns_names.append(name.content.decode("ascii"))
                    elif name.tag == 0x87:
                        self.ip_addresses.append(str(ipaddress.ip_address(name.content)))
            elif oid == "2.5.29.19":  # basicConstraints
                flags = value.children()
                self.is_ca = bool(flags) and flags[0].tag == 0x01 and flags[0].content != b"\x00"

    def names(self, encoded: bytes) -> tuple[tuple[tuple[str, str], ...], ...]:
        """A distinguished name as CPython's ``getpeercert()`` spells it."""
        result = []
        for rdn in _read(encoded, 0)[0].children():
            entries = []
            for attribute in rdn.children():
                oid_node, value = attribute.children()
                oid = _oid(oid_node.content)
                text = value.content.decode("utf-16-be" if value.tag == 0x1E else "utf-8")
                entries.append((_NAME_OIDS.get(oid, oid), text))
            result.append(tuple(entries))
        return tuple(result)

    def as_dict(self) -> dict[str, object]:
        """What ``SSLObject.getpeercert()`` returns for this certificate."""

        def when(moment: datetime.datetime) -> str:
            return moment.strftime("%b %d %H:%M:%S %Y GMT").replace(" 0", "  ", 1)

        info: dict[str, object] = {
            "subject": self.names(self.subject),
            "issuer": self.names(self.issuer),
            "version": 3,
            "serialNumber": f"{self.serial:X}",
            "notBefore": when(self.not_before),
            "notAfter": when(self.not_after),
        }
        alt = [("DNS", name) for name in self.dns_names]
        alt += [("IP Address", address.upper()) for address in self.ip_addresses]
        if alt:
            info["subjectAltName"] = tuple(alt)
        return info


def pem_to_der_list(pem: str) -> list[bytes]:
    """Every certificate in a PEM text, as DER."""
    blocks = re.findall(
        r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    return [base64.b64decode("".join(block.split())) for block in blocks]


# -- checking -------------------------------------------------------------------


def _signed_by(certificate: Certificate, issuer: Certificate) -> bool:
    from tlslite.api import X509

    scheme = _SIGNATURES.get(certificate.signature_oid)
    if scheme is None:
        raise CertificateError(
            f"unsupported certificate signature algorithm {certificate.signature_oid}"
        )
    kind, digest = scheme
    parsed = X509()
    parsed.parseBinary(bytearray(issuer.der))
    key = parsed.publicKey
    try:
        if kind == "rsa":
            return bool(
                key.hashAndVerify(bytearray(certificate.signature), bytearray(certificate.tbs),
                                  "PKCS1", digest)
            )  # fmt: skip
        return bool(
            key.hashAndVerify(bytearray(certificate.signature), bytearray(certificate.tbs),
                              None, digest)
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError, AssertionError):
        # A key of the other type, or a malformed signature: not signed by it.
        return False


def _check_time(certificate: Certificate, now: datetime.datetime) -> None:
    if now < certificate.not_before:
        raise CertificateError("certificate is not yet valid")
    if now > certificate.not_after:
        raise CertificateError("certificate has expired")


def verify_chain(
    chain: list[bytes], trusted: list[bytes], now: datetime.datetime | None = None
) -> Certificate:
    """Check that ``chain`` (leaf first, as the server sent it) leads to a trusted CA.

    Returns the leaf.  Issuers are found by name, among the trusted
    certificates first, then among the certificates the server sent; each
    link's signature is verified, and every issuer must be a CA.
    """
    if not chain:
        raise CertificateError("the server sent no certificate")
    now = now or datetime.datetime.now(datetime.UTC)
    anchors = [Certificate.from_der(der) for der in trusted]
    sent = [Certificate.from_der(der) for der in chain]
    leaf = current = sent[0]
    # A trusted certificate sent by the server itself ends the chain at once.
    for _ in range(10):
        _check_time(current, now)
        if any(anchor.der == current.der for anchor in anchors):
            return leaf
        for anchor in anchors:
            if anchor.subject == current.issuer and anchor.is_ca and _signed_by(current, anchor):
                _check_time(anchor, now)
                return leaf
        for candidate in sent[1:]:
            if (
                candidate.subject == current.issuer
                and candidate is not current
                and candidate.is_ca
                and _signed_by(current, candidate)
            ):
                current = candidate
                break
        else:
            if current is leaf and current.issuer == current.subject:
                raise CertificateError("self-signed certificate")
            raise CertificateError("unable to get local issuer certificate")
    raise CertificateError("certificate chain too long")


def match_hostname(certificate: Certificate, hostname: str) -> None:
    """Raise unless ``hostname`` is one of the certificate's subjectAltNames."""
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        if str(address) in certificate.ip_addresses:
            return
        raise CertificateError(f"IP address mismatch, certificate is not valid for '{hostname}'.")
    wanted = hostname.rstrip(".").lower()
    for pattern in certificate.dns_names:
        pattern = pattern.rstrip(".").lower()
        if pattern == wanted:
            return
        # A wildcard stands for exactly one whole leftmost label (RFC 6125).
        if pattern.startswith("*.") and "." in wanted:
            label, rest = wanted.split(".", 1)
            if label and rest == pattern[2:]:
                return
    raise CertificateError(f"Hostname mismatch, certificate is not valid for '{hostname}'.")
