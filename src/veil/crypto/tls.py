"""TLS contexts from the stdlib ``ssl``: TLS 1.3 only, keys loaded from memory (memfd)."""

import os
import ssl


def load_chain_in_memory(context: ssl.SSLContext, certificate_pem: bytes, key_pem: bytes) -> None:
    """Load a key and its chain without writing the key to any disk.

    The stdlib loads keys from files only; an anonymous memfd is a file that exists only
    in this process's memory.
    """
    fd = os.memfd_create("veil-tls-key", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + certificate_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def client_context(trust_anchors_pem: str | None) -> ssl.SSLContext:
    """Verifies chain and host name against ``trust_anchors_pem`` (None: verify nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if trust_anchors_pem is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=trust_anchors_pem)
    return context
