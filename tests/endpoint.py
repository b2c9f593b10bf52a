"""An SQS/SNS endpoint in front of the test stack's LocalStack that checks what real AWS
checks and LocalStack does not: every request's Signature Version 4, recomputed with
botocore's own `SigV4Auth`, and its session token, against the credentials it accepts
now (a test changes them to rotate); optionally over TLS, with a certificate from a
private CA the test makes (`PrivateCA`, with `cryptography`). A request it refuses gets
SQS's own 403 answer and is counted by its reason; one it accepts is forwarded to
LocalStack unchanged and counted by the access key that signed it.
"""

from __future__ import annotations

import datetime
import hmac
import http.client
import ipaddress
import re
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<names>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
DENIED = b'{"__type": "com.amazon.coral.service#IncompleteSignatureException", "message": "refused"}'


class PrivateCA:
    """A CA of the test's own, and a certificate it signed for localhost and 127.0.0.1."""

    def __init__(self, folder: Path, name: str = "login-pipeline test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.bundle = folder / "ca.pem"
        self.bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.chain = folder / "server.pem"
        self.chain.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.key = folder / "server.key"
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.name = name

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain, self.key)
        return context


def signature_problem(
    method: str, path: str, headers: dict[str, str], body: bytes, accepted: dict[str, tuple[str, str | None]]
) -> str | None:
    """Why AWS would refuse this request's signature, or None: unsigned, an access key it
    does not accept now, a missing or wrong session token, a signature that does not match
    (recomputed by botocore's SigV4Auth over the headers the request says it signed)."""
    lower = {name.lower(): value for name, value in headers.items()}
    found = AUTHORIZATION.fullmatch(lower.get("authorization", "").strip())
    if not found:
        return "unsigned"
    if found["key"] not in accepted:
        return "unknown or expired key"
    secret, token = accepted[found["key"]]
    if token is not None and lower.get("x-amz-security-token") != token:
        return "no session token" if "x-amz-security-token" not in lower else "wrong session token"
    names = found["names"].split(";")
    if any(name not in lower for name in names):
        return "a signed header is missing"
    scheme = "https" if lower.get("x-forwarded-proto") == "https" else "http"
    request = AWSRequest(
        method=method, url=f"{scheme}://{lower['host']}{path}", data=body, headers={n: lower[n] for n in names}
    )
    request.context["timestamp"] = lower.get("x-amz-date", "")
    signer = SigV4Auth(Credentials(found["key"], secret, token), found["service"], found["region"])
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return None if hmac.compare_digest(expected, found["signature"]) else "signature does not match"


class Endpoint:
    """The endpoint, on a free port of the loopback, until `close()`."""

    def __init__(
        self,
        target_port: int,
        accepted: dict[str, tuple[str, str | None]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.accepted = accepted  # access key -> (secret, session token); None: signatures unchecked
        self.signed_by: Counter[str] = Counter()  # access key -> requests it signed, accepted
        self.services: Counter[str] = Counter()  # sqs, sns: the service each accepted request was signed for
        self.last_seen: dict[str, float] = {}  # access key -> monotonic time of its latest request
        self.refused: Counter[str] = Counter()  # reason -> requests refused
        self.refused_handshakes = 0  # TLS handshakes the client broke off (it did not trust the certificate)
        self.requests = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                endpoint.handle(self, target_port, tls is not None)

            do_GET = do_POST

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                try:
                    return super().get_request()
                except ssl.SSLError:
                    with endpoint.lock:
                        endpoint.refused_handshakes += 1
                    raise

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://localhost:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accept_only(self, accepted: dict[str, tuple[str, str | None]]) -> None:
        with self.lock:
            self.accepted = dict(accepted)

    def handle(self, handler: BaseHTTPRequestHandler, target_port: int, over_tls: bool) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = dict(handler.headers.items())
        if over_tls:
            headers["X-Forwarded-Proto"] = "https"
        with self.lock:
            accepted = self.accepted
            self.requests += 1
        if accepted is not None:
            problem = signature_problem(handler.command, handler.path, headers, body, accepted)
            with self.lock:
                if problem:
                    self.refused[problem] += 1
                else:
                    self._count(headers)
            if problem:
                self._answer(handler, 403, [("Content-Type", "application/x-amz-json-1.0")], DENIED)
                return
        upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP | {"x-forwarded-proto"}}
            upstream.request(handler.command, handler.path, body=body, headers=forwarded)
            response = upstream.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            self._answer(handler, response.status, kept, payload)
        finally:
            upstream.close()

    def _count(self, headers: dict[str, str]) -> None:
        signed = AUTHORIZATION.search({k.lower(): v for k, v in headers.items()}.get("authorization", ""))
        assert signed is not None
        self.signed_by[signed["key"]] += 1
        self.services[signed["service"]] += 1
        self.last_seen[signed["key"]] = time.monotonic()

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
