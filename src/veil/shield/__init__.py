"""The network shield: TLS for unmodified TCP programs, terminated inside the runtime.

Server shields accept TLS 1.3 (mutual, against the session CA) and forward plaintext to the
program on loopback; client shields accept the program's plaintext on loopback and open
TLS to the remote, checking it against the session CA and the expected service name.
"""

from veil.shield.shields import ShieldError, ShieldSet, TlsIdentity

__all__ = ["ShieldError", "ShieldSet", "TlsIdentity"]
