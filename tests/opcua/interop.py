"""OPC UA interop for tests/tests/opcua.rs and opcua_device_client.rs: an asyncua server and
client, SignAndEncrypt with Basic256Sha256, each validating the other's certificate against a
trust store that holds only the iiot-acme CA (TRUSTED_VALIDATION: chain, time, ApplicationUri,
key usage, EKU, revocation).

Each side takes its certificate, key and trust store either from files (--trust DIR, shared,
and --server-cert/--server-key, --client-cert/--client-key) or from an OPC UA PKI directory
that device-client wrote (--server-pki DIR, --client-pki DIR): own/certs/device.der and
own/private/device.pem, trust locations trusted/certs and issuer/certs (asyncua builds no
chains, so the intermediate must be among them), CRL locations trusted/crl and issuer/crl.

With --expect-rsa-chain it first checks what Basic256Sha256 asks of the certificates
(CertificateSignatureAlgorithm RSA-PKCS15-SHA2-256): each is signed sha256WithRSAEncryption by an
RSA CA certificate (2048-4096 bits) in the trust store, printing "CHAIN <role> ..." for each.

Prints "SERVER REJECTED <error>" when the server's validator refuses the client's certificate.
Prints "OK <value>" and exits 0 when the client read a value over the secure channel; prints the
error and exits 1 otherwise.
"""

import argparse
import asyncio
import sys
from pathlib import Path

from asyncua import Client, Server, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID


def check_rsa_chain(role: str, cert_path: str, trust: Path) -> None:
    """Raises unless the certificate is signed sha256WithRSAEncryption by an RSA CA in `trust`."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSA_WITH_SHA256:
        raise ValueError(f"{role} certificate is signed {cert.signature_algorithm_oid.dotted_string}, "
                         "not sha256WithRSAEncryption")
    trusted = [c for f in sorted(trust.glob("*.pem")) for c in x509.load_pem_x509_certificates(f.read_bytes())]
    issuers = [c for c in trusted if c.subject == cert.issuer]
    if not issuers:
        raise ValueError(f"{role} certificate's issuer {cert.issuer.rfc4514_string()} is not in the trust store")
    key = issuers[0].public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not 2048 <= key.key_size <= 4096:
        raise ValueError(f"{role} certificate's issuer has no RSA 2048-4096 key")
    # Raises InvalidSignature unless this issuer made this signature with RSA PKCS#1 v1.5 SHA-256.
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    print(f"CHAIN {role} sha256WithRSAEncryption by RSA-{key.key_size} {issuers[0].subject.rfc4514_string()}")


class Side:
    """One application's certificate, key and trust store locations."""

    def __init__(self, cert: str, key: str, trust: list[Path], crls: list[Path]) -> None:
        self.cert, self.key, self.trust, self.crls = cert, key, trust, crls

    @staticmethod
    def of(pki: Path | None, cert: str | None, key: str | None, trust: Path | None) -> "Side":
        if pki is None:
            if not (cert and key and trust):
                raise SystemExit("give --*-pki DIR, or the certificate, key and --trust")
            return Side(cert, key, [trust], [])
        return Side(
            str(pki / "own" / "certs" / "device.der"),
            str(pki / "own" / "private" / "device.pem"),
            [pki / "trusted" / "certs", pki / "issuer" / "certs"],
            [pki / "trusted" / "crl", pki / "issuer" / "crl"],
        )

    async def validator(self, peer: CertificateValidatorOptions) -> CertificateValidator:
        store = TrustStore(self.trust, self.crls)
        await store.load()
        return CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION | peer, store)


async def main(a: argparse.Namespace) -> int:
    if a.expect_rsa_chain:
        try:
            check_rsa_chain("server", a.server_cert, a.trust)
            check_rsa_chain("client", a.client_cert, a.trust)
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            print(f"FAILED chain: {type(e).__name__}: {e}")
            return 1
    srv = Side.of(a.server_pki, a.server_cert, a.server_key, a.trust)
    cli = Side.of(a.client_pki, a.client_cert, a.client_key, a.trust)
    url = f"opc.tcp://127.0.0.1:{a.port}/"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    await server.set_application_uri(a.server_uri)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await server.load_certificate(srv.cert)
    await server.load_private_key(srv.key)
    server_validator = await srv.validator(CertificateValidatorOptions.PEER_CLIENT)

    async def checked(cert, app_description):
        try:
            await server_validator(cert, app_description)
        except Exception as e:  # noqa: BLE001 - reported, then raised again
            print(f"SERVER REJECTED {type(e).__name__}: {e}", flush=True)
            raise

    server.set_certificate_validator(checked)
    idx = await server.register_namespace("urn:iiot-acme:test")
    obj = await server.nodes.objects.add_object(idx, "Line1")
    var = await obj.add_variable(idx, "Temperature", 21.5)

    async with server:
        client = Client(url, timeout=10)
        client.application_uri = a.client_uri
        client.certificate_validator = await cli.validator(CertificateValidatorOptions.PEER_SERVER)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            cli.cert,
            cli.key,
            server_certificate=srv.cert,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        try:
            async with client:
                node = client.get_node(var.nodeid)
                value = await node.read_value()
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            print(f"FAILED {type(e).__name__}: {e}")
            return 1
    print(f"OK {value}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--trust", type=Path)
    p.add_argument("--server-pki", type=Path)
    p.add_argument("--server-cert")
    p.add_argument("--server-key")
    p.add_argument("--server-uri", required=True)
    p.add_argument("--client-pki", type=Path)
    p.add_argument("--client-cert")
    p.add_argument("--client-key")
    p.add_argument("--client-uri", required=True)
    p.add_argument("--expect-rsa-chain", action="store_true")
    sys.exit(asyncio.run(main(p.parse_args())))
