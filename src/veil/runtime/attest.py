"""The runtime side of the attestation protocol: nonce -> evidence -> bundle.

The runtime makes two ephemeral keys that live only in its memory: a P-256 instance key
(certified by the session CA, for TLS) and an X25519 key the bundle is encrypted to. Both
are bound into the evidence's report_data together with the nonce and the workload digest.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from veil.client import CasClient
from veil.crypto import BundleKeyPair, open_to_key
from veil.crypto.x509ca import public_key_der
from veil.protocol import (
    AttestationRequest,
    ConfigurationBundle,
    Evidence,
    EvidenceSource,
    LaunchDescriptor,
    ProtocolError,
    bundle_info,
    expected_report_data,
    runtime_key_digest,
)
from veil.runtime.errors import RuntimeFailure


def gpu_devices(launch: LaunchDescriptor) -> Callable[[bytes], Sequence[Evidence]] | None:
    """The GPU evidence collector ``provision`` calls with the nonce, when the service's
    attestation entries require GPUs (NVML, veil.tee.nvml); None otherwise."""
    if not launch.gpu_evidence:
        return None

    def collect(nonce: bytes) -> Sequence[Evidence]:
        from veil.tee.nvml import NvmlError, collect_gpu_evidence  # noqa: PLC0415 (ctypes; GPU services only)

        try:
            return collect_gpu_evidence(nonce)
        except NvmlError as exc:
            raise RuntimeFailure(
                f"the service's attestation requires GPUs beside the CPU TEE: {exc}"
            ) from None

    return collect


@dataclass(frozen=True)
class Provisioned:
    """What an attested runtime holds: its configuration and its instance identity."""

    bundle: ConfigurationBundle
    instance_key: ec.EllipticCurvePrivateKey = field(repr=False)
    instance_certificate: x509.Certificate
    session_ca: x509.Certificate
    sim: bool
    #: the CAS's signed attestation result (network CAS only), given to the program as VEIL_EAR
    ear: str | None = None


def provision(
    client: CasClient,
    evidence_source: EvidenceSource,
    config_id: str,
    measurement: str,
    devices: Callable[[bytes], Sequence[Evidence]] | None = None,
) -> Provisioned:
    """Attest to the CAS and receive the configuration for ``config_id``. ``devices``
    gives the evidence of devices beside the CPU TEE (GPUs) for the attestation's nonce.

    Raises AttestationRefused with the CAS's reason when the CAS says no.
    """
    instance_key = ec.generate_private_key(ec.SECP256R1())
    bundle_keys = BundleKeyPair.generate()
    instance_der = public_key_der(instance_key.public_key())
    nonce = client.nonce()
    workload_digest = bytes.fromhex(measurement.removeprefix("sha256:"))
    report_data = expected_report_data(
        nonce, runtime_key_digest(instance_der, bundle_keys.public_bytes), workload_digest
    )
    evidence = evidence_source.collect(report_data, measurement)
    device_evidence = tuple(devices(nonce)) if devices is not None else ()
    grant = client.attest(
        AttestationRequest(
            config_id, nonce, evidence, instance_der, bundle_keys.public_bytes, measurement, device_evidence
        )
    )
    bundle = ConfigurationBundle.from_bytes(
        open_to_key(grant.bundle_ciphertext, bundle_keys, bundle_info(nonce, config_id))
    )
    if f"{bundle.session}/{bundle.service}" != config_id:
        raise ProtocolError(f"the CAS answered for {bundle.session}/{bundle.service}, not {config_id}")
    certificate = x509.load_pem_x509_certificate(grant.instance_certificate_pem.encode())
    if certificate.public_key() != instance_key.public_key():
        raise ProtocolError("the instance certificate is not for this runtime's key")
    return Provisioned(
        bundle=bundle,
        instance_key=instance_key,
        instance_certificate=certificate,
        session_ca=x509.load_pem_x509_certificate(grant.session_ca_pem.encode()),
        sim=grant.sim,
        ear=grant.ear,
    )
