"""OPC UA interop for tests/tests/opcua.rs: an asyncua server and client, SignAndEncrypt with
Basic256Sha256, each validating the other's certificate against a trust store that holds only
the iiot-acme CA (TRUSTED_VALIDATION: chain, time, ApplicationUri, key usage, EKU).

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


async def validator(trust: Path, peer: CertificateValidatorOptions) -> CertificateValidator:
    store = TrustStore([trust], [])
    await store.load()
    return CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION | peer, store)


async def main(a: argparse.Namespace) -> int:
    url = f"opc.tcp://127.0.0.1:{a.port}/"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    await server.set_application_uri(a.server_uri)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await server.load_certificate(a.server_cert)
    await server.load_private_key(a.server_key)
    server.set_certificate_validator(await validator(a.trust, CertificateValidatorOptions.PEER_CLIENT))
    idx = await server.register_namespace("urn:iiot-acme:test")
    obj = await server.nodes.objects.add_object(idx, "Line1")
    var = await obj.add_variable(idx, "Temperature", 21.5)

    async with server:
        client = Client(url, timeout=10)
        client.application_uri = a.client_uri
        client.certificate_validator = await validator(a.trust, CertificateValidatorOptions.PEER_SERVER)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            a.client_cert,
            a.client_key,
            server_certificate=a.server_cert,
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
    p.add_argument("--trust", type=Path, required=True)
    p.add_argument("--server-cert", required=True)
    p.add_argument("--server-key", required=True)
    p.add_argument("--server-uri", required=True)
    p.add_argument("--client-cert", required=True)
    p.add_argument("--client-key", required=True)
    p.add_argument("--client-uri", required=True)
    sys.exit(asyncio.run(main(p.parse_args())))
