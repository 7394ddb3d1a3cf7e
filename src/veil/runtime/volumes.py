"""Mounting a service's volumes before the program and recording their tags after it.

A volume is stored in the directory the service sees it at, and mounted over it. The tag
the CAS holds must be in the volume's history at mount (docs/volume-format.md, The volume
tag); after the program, the new tag is pushed with compare-and-swap from the tag the CAS
holds, signed by the runtime's instance key. A volume with ``freshness: fsync`` has every
commit's tag pushed before the fsync returns (veil.volume.reporting).
"""

import socket
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
from veil.volume import VolumeError, daemon, reporting

#: the program has exited; a process it left behind may hold a file open for a moment
_UNMOUNT_WAIT = 10.0


@dataclass
class ActiveVolume:
    spec: BundleVolume
    path: Path
    #: the tag the CAS holds (moves with each report, for freshness fsync)
    tag: str
    reports: socket.socket | None = None


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
            if spec.tag is None and spec.readonly:
                raise RuntimeFailure(
                    f"volume '{spec.name}' is read-only but the CAS holds no tag for it "
                    "(give it an initial_tag: a read-only volume is never created fresh)"
                )
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
                volume = ActiveVolume(spec, path, "")
                daemon_end = _reporting(client, provisioned, volume)
                info = path.stat() if path.is_dir() else None  # the image's directory: its owner
                owner = (info.st_uid, info.st_gid, info.st_mode & 0o7777) if info is not None else None
                mounted = daemon.start(
                    path, path, spec.key, None, create_mode=spec.mode, reports=daemon_end, root_owner=owner
                )
                _close(daemon_end)
                _push(client, provisioned, spec.name, None, mounted.initial_tag)
                volume.tag = mounted.initial_tag
                report(f"created fresh {spec.mode} volume '{spec.name}' at {path}")
            else:
                volume = ActiveVolume(spec, path, spec.tag)
                daemon_end = _reporting(client, provisioned, volume)
                try:
                    mounted = daemon.start(
                        path, path, spec.key, spec.tag, reports=daemon_end, readonly=spec.readonly
                    )
                except VolumeError as exc:
                    raise RuntimeFailure(f"volume '{spec.name}' at {path} is refused: {exc}") from None
                finally:
                    _close(daemon_end)
                report(f"mounted volume '{spec.name}' at {path}{' read-only' if spec.readonly else ''}")
            active.append(volume)
    except BaseException:
        for volume in reversed(active):
            daemon.stop(volume.path, wait=_UNMOUNT_WAIT)
        raise
    return active


def _reporting(client: CasClient, provisioned: Provisioned, volume: ActiveVolume) -> socket.socket | None:
    """For freshness fsync: a thread that pushes each reported commit's tag; the daemon's end."""
    if volume.spec.freshness != "fsync":
        return None
    ours, theirs = reporting.pair()

    def push(previous: str | None, tag: str) -> None:
        _push(client, provisioned, volume.spec.name, volume.tag, tag)
        volume.tag = tag

    volume.reports = ours
    reporting.serve_reports(ours, push, volume.spec.name)
    return theirs


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()  # the daemon holds its own copy


def unmount_volumes(
    client: CasClient, provisioned: Provisioned, active: list[ActiveVolume], report: Callable[[str], None]
) -> None:
    """Unmount every volume, then push each new tag; the first failure is raised at the end.

    A run in which any volume refused data that failed authentication (the program read
    tampered data, and may have acted on what it did not get) records no new tag at all:
    what it wrote is not accepted, and the next run refuses those volumes."""
    failures: list[str] = []
    stopped: list[tuple[ActiveVolume, str]] = []
    tampered: list[str] = []
    for volume in reversed(active):
        try:
            tag, integrity_errors = daemon.stop_counting(volume.path, wait=_UNMOUNT_WAIT)
            if volume.reports is not None:
                volume.reports.close()
            if integrity_errors:
                tampered.append(
                    f"volume '{volume.spec.name}' refused {integrity_errors} tampered reads or writes"
                )
            stopped.append((volume, tag))
        except Exception as exc:  # keep going: the other volumes still need their tags
            failures.append(f"volume '{volume.spec.name}': {exc}")
    if tampered:
        raise RuntimeFailure(
            "integrity error: " + "; ".join(tampered) + ": the stored data was modified outside veil; "
            "no volume's new tag is recorded, so nothing this run wrote is accepted"
            + ("" if not failures else "; " + "; ".join(failures))
        )
    for volume, tag in stopped:
        try:
            if volume.spec.readonly and tag != volume.tag:
                raise RuntimeFailure(f"the read-only volume moved to {tag[:16]}…")
            if tag != volume.tag:
                _push(client, provisioned, volume.spec.name, volume.tag, tag)
            report(f"volume '{volume.spec.name}' unmounted, tag {tag[:16]}…")
        except Exception as exc:
            failures.append(f"volume '{volume.spec.name}': {exc}")
    if failures:
        raise RuntimeFailure("; ".join(failures) + " (the next run will refuse these volumes)")
