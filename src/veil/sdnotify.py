"""Tell a supervisor that a service is ready: systemd's ``Type=notify`` (sd_notify(3)).

Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) nothing happens.
"""

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
