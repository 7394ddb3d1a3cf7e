"""`veil run`: on the embedded CAS (``--policy FILE --service NAME``, sim mode) or on a
network CAS (``--cas URL --config-id SESSION/SERVICE``).

Measure the program, attest, receive the bundle, mount volumes, start shields, supervise
the program, push volume tags. Both paths use the same client interface.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from veil.client.interface import CasClient
from veil.client.local import (
    LocalCasClient,
    Prepared,
    ServerUnavailable,
    can_serve,
    code_fingerprint,
    idle_seconds,
    start_server,
)
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused, EvidenceSource, LaunchDescriptor, VolumeTagUpdate
from veil.runtime.attest import Provisioned, gpu_devices, provision
from veil.runtime.errors import RuntimeFailure
from veil.runtime.evidence_sources import evidence_source
from veil.runtime.explain import remember_accepted, what_changed
from veil.runtime.network import start_shields
from veil.runtime.supervisor import LaunchSpec, supervise
from veil.tee import measure_command
from veil.tee.image_measure import ImageMeasurement, measure_image, resolve_after_mount
from veil.tee.measure import Measurement, MeasurementError

if TYPE_CHECKING:
    from veil.cas import Cas
    from veil.client.http import HttpCasClient
    from veil.policy import Session

# The embedded CAS and the session model are imported where they are used: a runtime
# started from a converted image talks to a network CAS and needs neither (each costs
# ~0.1 s of every container start).

#: The owner identity of whoever runs the embedded CAS on this machine.
EMBEDDED_OWNER = "local"


@dataclass(frozen=True)
class EmbeddedHome:
    """The embedded CAS and the node's sim platform key under one directory ($VEIL_HOME)."""

    root: Path

    @property
    def cas_dir(self) -> Path:
        return self.root / "cas"

    @property
    def platform_key_file(self) -> Path:
        return self.root / "las" / "platform.key"

    @property
    def socket(self) -> Path:
        """Where the home's embedded CAS server listens (veil.runtime.embedded_server)."""
        return self.root / "cas.sock"

    @property
    def collateral_dir(self) -> Path:
        """The node's Intel collateral (``veil las collateral import``), read by the CAS."""
        return self.root / "las" / "collateral"

    def open(self) -> tuple["Cas", PlatformSigningKey]:
        from veil.cas import Cas  # noqa: PLC0415

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        cas = Cas.open_embedded(self.cas_dir, collateral_dir=self.collateral_dir)
        key = PlatformSigningKey.load_or_create(self.platform_key_file)
        cas.register_sim_platform(key.public_bytes, EMBEDDED_OWNER, "this node (embedded CAS)")
        cas.implicit_sim_platforms = frozenset({key.key_id})  # one machine, one owner
        return cas, key


def register_or_update(cas: "Cas", session: "Session", text: str, source: str) -> str:
    """Bring the CAS to the file's session; say what was done.

    A file without ``predecessor`` is taken as "the current version": if it means the same
    as the stored session it is left alone, otherwise it is stored as the next version. A
    file naming a predecessor is submitted as written, so the CAS checks it.
    """
    from veil.policy import parse_session, session_hash, with_predecessor  # noqa: PLC0415

    current = cas.session_hash_of(session.name)
    if current is None:
        record = cas.create_session(text, EMBEDDED_OWNER, source)
        return f"registered session {record.name} ({record.hash[:16]}…)"
    if session.predecessor is None:
        stored = cas.get_session(session.name, EMBEDDED_OWNER)
        same = session.model_copy(update={"predecessor": stored.session.predecessor})
        if session_hash(same) == current:
            return f"session {session.name} unchanged ({current[:16]}…)"
        text = with_predecessor(text, current)
        if parse_session(text, source).predecessor != current:
            raise RuntimeFailure(f"{source}: could not set the predecessor; add 'predecessor: {current}'")
    record = cas.update_session(text, EMBEDDED_OWNER, source)
    return f"updated session {record.name} to {record.hash[:16]}… (revision {record.revision})"


def checked_session(text: str, source: str, service_name: str, extra_args: bool) -> "Session":
    """The session of a policy file, checked to have the service and, if extra arguments are
    given, to allow them."""
    from veil.policy import parse_session  # noqa: PLC0415

    session = parse_session(text, source)
    service = session.service(service_name)
    if service is None:
        raise RuntimeFailure(f"{source}: {session.no_service(service_name)}")
    if extra_args and not service.allow_extra_args:
        raise RuntimeFailure(
            f"service '{service_name}' does not accept extra arguments; they would not be attested "
            "(set allow_extra_args: true to allow them)"
        )
    return session


def prepare_policy_run(cas: "Cas", session: "Session", text: str, source: str, service_name: str) -> Prepared:
    """Bring the embedded CAS to the file's session; what the service runs."""
    message = register_or_update(cas, session, text, source)
    config_id = f"{session.name}/{service_name}"
    return Prepared(message, config_id, cas.launch_descriptor(config_id))


def run_with_policy(
    policy: Path,
    service_name: str,
    extra_args: list[str],
    home: EmbeddedHome,
    report: Callable[[str], None],
    mode: str = "sim",
) -> int:
    """``veil run --policy``: on the home's embedded CAS server if one answers, else
    in-process (and then a server is started for the next runs, unless it is off)."""
    idle = idle_seconds() if can_serve(home.socket) else None
    served = _on_server(policy, service_name, extra_args, home) if idle is not None else None
    if served is not None:
        client, prepared = served
        report(prepared.message)
        key = PlatformSigningKey.load_or_create(home.platform_key_file)
        return _attest_and_run(client, prepared, home, evidence_source(mode, key), extra_args, report)
    from veil.client.embedded import EmbeddedCasClient  # noqa: PLC0415
    from veil.policy.loader import read_session_file  # noqa: PLC0415

    text = read_session_file(policy)
    session = checked_session(text, str(policy), service_name, bool(extra_args))
    cas, platform_key = home.open()
    try:
        prepared = prepare_policy_run(cas, session, text, str(policy), service_name)
        report(prepared.message)
        if idle is not None:
            start_server(home.root, idle)
            report(
                f"started the embedded CAS server for the next runs (it exits after {idle:.0f} s idle; "
                "VEIL_EMBEDDED_SERVER=off: none)"
            )
        evidence = evidence_source(mode, platform_key)
        return _attest_and_run(EmbeddedCasClient(cas), prepared, home, evidence, extra_args, report)
    finally:
        cas.close()


def _on_server(
    policy: Path, service_name: str, extra_args: list[str], home: EmbeddedHome
) -> tuple[LocalCasClient, Prepared] | None:
    """The run prepared by the home's server; None if none answers (or the file cannot be
    read: the in-process path reports that)."""
    if not home.socket.exists():
        return None
    try:
        text = policy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    client = LocalCasClient(home.socket, code_fingerprint(), functools.partial(_push_in_process, home))
    try:
        return client, client.prepare(text, str(policy), service_name, bool(extra_args))
    except ServerUnavailable:
        return None


def _push_in_process(home: EmbeddedHome, update: VolumeTagUpdate) -> None:
    cas, _key = home.open()
    try:
        cas.push_volume_tag(update)
    finally:
        cas.close()


def _attest_and_run(
    client: CasClient,
    prepared: Prepared,
    home: EmbeddedHome,
    evidence: EvidenceSource,
    extra_args: list[str],
    report: Callable[[str], None],
) -> int:
    config_id = prepared.config_id
    measurement = measure_workload(prepared.launch)
    try:
        provisioned = provision(client, evidence, config_id, measurement.value, gpu_devices(prepared.launch))
    except AttestationRefused as refused:
        changed = (
            what_changed(home.root, config_id, measurement) if isinstance(measurement, Measurement) else []
        )
        if not changed:
            raise
        lines = "".join(f"\n  since the last accepted run: {line}" for line in changed)
        raise AttestationRefused(refused.reason + lines) from None
    if isinstance(measurement, Measurement):
        remember_accepted(home.root, config_id, measurement)
    return run_provisioned(client, provisioned, measurement, extra_args, report)


def run_from_cas(
    client: "HttpCasClient",
    config_id: str,
    evidence: EvidenceSource,
    extra_args: list[str],
    report: Callable[[str], None],
) -> int:
    """``veil run --cas URL --config-id SESSION/SERVICE``: the service as the CAS defines it.

    The runtime measures the command the CAS names for the service (its template, without
    secret values), or the whole root for ``measure: image``, attests with that measurement
    and executes exactly the measured file.
    """
    launch = client.launch(config_id)
    measurement = measure_workload(launch)
    provisioned = provision(client, evidence, config_id, measurement.value, gpu_devices(launch))
    if extra_args and not provisioned.bundle.allow_extra_args:
        raise RuntimeFailure(
            f"service '{config_id}' does not accept extra arguments; they would not be attested "
            "(set allow_extra_args: true to allow them)"
        )
    return run_provisioned(client, provisioned, measurement, extra_args, report)


def measure_workload(launch: LaunchDescriptor) -> Measurement | ImageMeasurement:
    """The measurement the service's attestation entries name (docs/measurement.md,
    docs/image.md)."""
    if launch.measure == "image":
        return measure_image(launch.command, launch.pwd, launch.path, launch.volume_paths)
    return measure_command(launch.command, launch.pwd, launch.path)


def run_provisioned(
    client: CasClient,
    provisioned: Provisioned,
    measurement: Measurement | ImageMeasurement,
    extra_args: list[str],
    report: Callable[[str], None],
) -> int:
    """Mount volumes, start shields, supervise the program, then stop and push tags. A
    program that lives in a volume is found once the volumes are mounted."""
    bundle = provisioned.bundle
    report(f"attested {bundle.session}/{bundle.service} ({measurement.value[:19]}…); starting program")
    unmount = _mount(client, provisioned, report)
    shields = None
    try:
        executable = measurement.executable
        if isinstance(measurement, ImageMeasurement):
            try:
                executable = resolve_after_mount(measurement)
            except MeasurementError as exc:
                raise RuntimeFailure(str(exc)) from None
        shields = start_shields(provisioned, report)
        return supervise(
            LaunchSpec(
                executable=executable,
                argv=[*bundle.argv, *extra_args],
                environment=_with_result(bundle.environment, provisioned.ear),
                pwd=bundle.pwd,
                files=bundle.files,
                tmpfs=bundle.tmpfs,
            )
        )
    finally:
        if shields is not None:
            shields.stop()
        unmount()


def _with_result(environment: dict[str, str], ear: str | None) -> dict[str, str]:
    """The program's environment, with the CAS's attestation result (docs/attestation.md,
    "Attestation results") for it to show relying parties; the session's own variable of
    that name wins."""
    return environment if ear is None else {"VEIL_EAR": ear, **environment}


def _mount(client: CasClient, provisioned: Provisioned, report: Callable[[str], None]) -> Callable[[], None]:
    """Mount the bundle's volumes; the function returned unmounts them and pushes their tags.
    The volume code is imported only for a bundle that has volumes (~10 ms of every run)."""
    if not provisioned.bundle.volumes:
        return lambda: None
    from veil.runtime.volumes import mount_volumes, unmount_volumes  # noqa: PLC0415

    active = mount_volumes(client, provisioned, report)
    return functools.partial(unmount_volumes, client, provisioned, active, report)
