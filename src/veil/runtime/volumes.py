"""Mounting a service's volumes before the program and recording their tags after it.

A volume is stored in the directory the service sees it at, and mounted over it. The tag
the CAS holds must match at mount; after the program, the new tag is pushed with
compare-and-swap, signed by the runtime's instance key.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from veil.client import CasClient
from veil.protocol import BundleVolume, VolumeTagUpdate
from veil.runtime.attest import Provisioned
from veil.runtime.errors import RuntimeFailure
from veil.volume import VolumeError, daemon

#: the program has exited; a process it left behind may hold a file open for a moment
_UNMOUNT_WAIT = 10.0


@dataclass(frozen=True)
class ActiveVolume:
    spec: BundleVolume
    path: Path
    tag: str


def _push(client: CasClient, provisioned: Provisioned, volume: str, previous: str | None, tag: str) -> None:
    bundle = provisioned.bundle
    unsigned = VolumeTagUpdate(
        f"{bundle.session}/{bundle.service}",
        volume,
        previous,
        tag,
        provisioned.instance_certificate.public_bytes(Encoding.PEM).decode(),
        b"",
    )
    signature = provisioned.instance_key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    client.push_volume_tag(
        VolumeTagUpdate(unsigned.config_id, volume, previous, tag, unsigned.certificate_pem, signature)
    )


def mount_volumes(
    client: CasClient, provisioned: Provisioned, report: Callable[[str], None]
) -> list[ActiveVolume]:
    active: list[ActiveVolume] = []
    try:
        for spec in provisioned.bundle.volumes:
            path = Path(spec.path)
            if spec.tag is None:
                if not spec.accept_fresh:
                    raise RuntimeFailure(
                        f"volume '{spec.name}' has no tag in the CAS yet and the session does not "
                        "accept a fresh volume (set accept_fresh: true on the volume)"
                    )
                if path.exists() and any(path.iterdir()):
                    raise RuntimeFailure(
                        f"volume '{spec.name}': the CAS knows no tag for it, but {path} is not empty; "
                        "refusing to adopt data the CAS has never seen"
                    )
                mounted = daemon.start(path, path, spec.key, None, create_mode=spec.mode)
                _push(client, provisioned, spec.name, None, mounted.initial_tag)
                report(f"created fresh {spec.mode} volume '{spec.name}' at {path}")
            else:
                try:
                    mounted = daemon.start(path, path, spec.key, spec.tag)
                except VolumeError as exc:
                    raise RuntimeFailure(f"volume '{spec.name}' at {path} is refused: {exc}") from None
                report(f"mounted volume '{spec.name}' at {path}")
            active.append(ActiveVolume(spec, path, mounted.initial_tag))
    except BaseException:
        for volume in reversed(active):
            daemon.stop(volume.path, wait=_UNMOUNT_WAIT)
        raise
    return active


def unmount_volumes(
    client: CasClient, provisioned: Provisioned, active: list[ActiveVolume], report: Callable[[str], None]
) -> None:
    """Unmount every volume and push its new tag; the first failure is raised at the end."""
    failures: list[str] = []
    for volume in reversed(active):
        try:
            tag = daemon.stop(volume.path, wait=_UNMOUNT_WAIT)
            if tag != volume.tag:
                _push(client, provisioned, volume.spec.name, volume.tag, tag)
            report(f"volume '{volume.spec.name}' unmounted, tag {tag[:16]}…")
        except Exception as exc:  # keep going: the other volumes still need their tags
            failures.append(f"volume '{volume.spec.name}': {exc}")
    if failures:
        raise RuntimeFailure("; ".join(failures) + " (the next run will refuse these volumes)")
