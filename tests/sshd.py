"""A real OpenSSH server on loopback for the `veil remote` tests: Debian's sshd on a free
port, with its own host key, one authorized client key, no passwords, nothing forwarded."""

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.net import free_port

SSHD = "/usr/sbin/sshd"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class SshServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def ssh_options(self) -> list[str]:
        """`veil remote run` options that reach this server."""
        return ["--known-hosts", str(self.known_hosts), "--identity", str(self.client_key)]

    def new_host_key(self) -> None:
        """The host's key changes (a new machine, or a machine in the middle)."""
        self.stop()
        for path in (self.root / "host_key", self.root / "host_key.pub"):
            path.unlink()
        _keygen(self.root / "host_key")
        self.process = _start(self.root, self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def _start(root: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(root / "sshd.log", "ab")  # noqa: SIM115 - the server keeps it
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"sshd did not start:\n{(root / 'sshd.log').read_text()}") from None
            time.sleep(0.05)


def start_sshd(root: Path) -> SshServer:
    """sshd as root on 127.0.0.1 (root may log in with the client key only)."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        raise AssertionError("openssh-server and openssh-client are needed (make test installs them as root)")
    root.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    _keygen(root / "host_key")
    _keygen(root / "client_key")
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = free_port()
    (root / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitUserEnvironment no
LogLevel ERROR
"""
    )
    server = SshServer(root, port, _start(root, port))
    server.known_hosts.write_text(
        f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text().split(' ')[0]} "
        f"{(root / 'host_key.pub').read_text().split(' ')[1]}\n"
    )
    return server
