"""Starting a service's shields with the runtime's attested identity."""

import resource
from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from veil.policy.model import Network
from veil.runtime.attest import Provisioned
from veil.shield import ShieldSet, TlsIdentity


def start_shields(provisioned: Provisioned, report: Callable[[str], None]) -> ShieldSet | None:
    network = Network.model_validate(provisioned.bundle.network or {})
    if not network.servers and not network.clients:
        return None
    identity = TlsIdentity(
        provisioned.instance_certificate.public_bytes(Encoding.PEM),
        provisioned.instance_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        provisioned.session_ca.public_bytes(Encoding.PEM),
        {k: v.encode("ascii") for k, v in provisioned.bundle.network_secrets.items()},
    )
    # Each shielded connection holds two descriptors; the default soft limit (1024) would cap
    # a busy service near 500 connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    shields = ShieldSet(network, identity)
    shields.start()
    for server in network.servers:
        report(
            f"shield: TLS on {server.listen} -> {server.forward} "
            f"(identity: {server.identity}, client auth: {server.client_auth})"
        )
    for client in network.clients:
        report(
            f"shield: {client.listen} -> TLS {client.connect} "
            f"({client.server_name}, identity: {client.identity}, server auth: {client.server_auth})"
        )
    return shields
