"""Starting a service's shields with the runtime's attested identity."""

import resource
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from veil.runtime.attest import Provisioned

if TYPE_CHECKING:
    from veil.shield import ShieldSet


def start_shields(provisioned: Provisioned, report: Callable[[str], None]) -> "ShieldSet | None":
    raw = provisioned.bundle.network or {}
    if not raw.get("servers") and not raw.get("clients"):
        return None
    # only now: the session model (pydantic) and the shields cost ~0.1 s of every start
    from veil.policy.model import Network  # noqa: PLC0415
    from veil.shield import ShieldSet, TlsIdentity  # noqa: PLC0415

    network = Network.model_validate(raw)
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
