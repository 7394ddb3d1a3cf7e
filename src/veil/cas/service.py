"""The CAS use cases: sessions, platforms, nonces, attestation decisions, audit.

HTTP handlers (network CAS) and the embedded client call these methods; none of them
knows about transport. Every change and every decision is written to the audit log.
"""

import base64
import dataclasses
import datetime as dt
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from veil.cas.audit import AuditLog
from veil.cas.bundle import build_bundle
from veil.cas.certificate_secrets import (
    certificate_order,
    issue_for,
    new_private_key,
    renderer,
    renewal_due,
)
from veil.cas.errors import (
    AccessDenied,
    CasError,
    Conflict,
    NotFound,
    PredecessorMismatch,
    SessionNotFound,
    SharingRefused,
    VolumeTagRefused,
)
from veil.cas.namespaces import check_namespace, may
from veil.cas.nonces import NonceRegistry
from veil.cas.principals import Principals
from veil.cas.sealing import SealedRecords, load_or_create_master_key
from veil.cas.secret_values import definition_fingerprint, make_secret_value
from veil.cas.sharing import SessionRecord, imported_secret, pin_peers, sharing_warnings, volume_source
from veil.cas.storage import RecordStore, SqliteStore
from veil.crypto import AeadKey, SignatureInvalid, constant_time_equal, seal_to_key
from veil.crypto.certs import check_valid_at, load_pem_chain, verify_ecdsa, verify_issued_by
from veil.crypto.encoding import sha256_hex
from veil.crypto.x509ca import CertificateAuthority, certificate_fingerprint, load_p256_public_key
from veil.errors import VeilError
from veil.policy import (
    SecretRenderer,
    Service,
    Session,
    SimAttestation,
    parse_session,
    session_hash,
    substitute_text,
)
from veil.policy.governance import Approval, review_update
from veil.policy.model import ConcreteAttestation, TemplateAttestation
from veil.policy.placeholders import KIND_FORMATS, PRIVATE_FORMATS
from veil.protocol import (
    AttestationGrant,
    AttestationRefused,
    AttestationRequest,
    BundleVolume,
    LaunchDescriptor,
    VolumeTagUpdate,
    bundle_info,
    expected_report_data,
    split_config_id,
)
from veil.tee import EvidenceError, verify_sim_evidence
from veil.tee.ear import ResultSigner

_SESSION = "session"
_VERSION = "session-version"
_SECRET = "secret"
_CA = "session-ca"
_PLATFORM = "platform"
_VOLUME = "volume"


@dataclass(frozen=True)
class SessionVersion:
    hash: str
    revision: int
    time: int
    by: str
    text: str


@dataclass(frozen=True)
class _Decision:
    grant: AttestationGrant | None
    reason: str
    details: dict[str, object]


@functools.lru_cache(maxsize=512)
def _parse_stored(text: str, name: str) -> Session:
    """Stored sessions are immutable per text; parse each once (YAML parsing is slow)."""
    return parse_session(text, f"stored session {name}")


@functools.lru_cache(maxsize=512)
def _ca_from_der(key_der: bytes, cert_der: bytes) -> CertificateAuthority:
    return CertificateAuthority.from_der(key_der, cert_der)


@functools.lru_cache(maxsize=64)
def parse_submitted(text: str, source: str) -> Session:
    """A submitted session, parsed once: the server parses it off its event loop first, with
    a time limit (docs/cas-api.md, "Limits"); the use case then finds it here."""
    return parse_session(text, source)


class Cas:
    """The Configuration and Attestation Service over one record store."""

    def __init__(
        self,
        store: RecordStore,
        master_key: AeadKey,
        sim_mode: bool = True,
        collateral_dir: Path | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.records = SealedRecords(store, master_key)
        self.audit = AuditLog(self.records)
        self.nonces = NonceRegistry(self.records)
        self.principals = Principals(self.records, self.audit, sim_mode)
        self.sim_mode = sim_mode
        #: sim platforms accepted for every session without being named in it: the embedded
        #: CAS's own node (one machine, one owner); empty on a network CAS
        self.implicit_sim_platforms: frozenset[str] = frozenset()
        #: Intel collateral (a collateral store, one directory per TEE and FMSPC)
        self.collateral_dir = collateral_dir
        self._clock = clock
        #: signs an attestation result (EAR) for each grant: the network CAS's identity key;
        #: none on the embedded CAS, which has no identity a relying party could pin
        self.result_signer: ResultSigner | None = None

    @classmethod
    def open_embedded(cls, data_dir: Path, collateral_dir: Path | None = None) -> "Cas":
        """The embedded CAS (sim mode): SQLite and a master key file under ``data_dir``."""
        key = load_or_create_master_key(data_dir / "master.key")
        return cls(SqliteStore(data_dir / "cas.db"), key, sim_mode=True, collateral_dir=collateral_dir)

    def close(self) -> None:
        self.records.store.close()

    def clock(self) -> dt.datetime:
        """The time at which this CAS verifies evidence and collateral."""
        return self._clock()

    # -- sessions ---------------------------------------------------------------------

    def _record(self, name: str) -> tuple[int, SessionRecord] | None:
        found = self.records.get(_SESSION, name)
        if found is None:
            return None
        version, raw = found
        session = _parse_stored(raw["text"], name)
        return version, SessionRecord(
            name,
            raw["hash"],
            raw["text"],
            raw["creator"],
            int(raw["revision"]),
            session,
            dict(raw.get("peers", {})),
        )

    def get_session(self, name: str, caller: str) -> SessionRecord:
        found = self._record(name)
        if found is None:
            raise SessionNotFound(f"no session named '{name}'")
        record = found[1]
        if not may(record.session.access_policy.read, caller, record.creator):
            raise AccessDenied(f"you may not read session '{name}'")
        return record

    def list_sessions(self, caller: str) -> list[str]:
        """The names of the sessions ``caller`` may read."""
        names = []
        for name in self.records.keys(_SESSION):
            found = self._record(name)
            if found and may(found[1].session.access_policy.read, caller, found[1].creator):
                names.append(name)
        return names

    def launch_descriptor(self, config_id: str) -> LaunchDescriptor:
        """What a service runs, for a runtime to measure before it attests: the command as
        written (placeholders not substituted, so no secret value), pwd, PATH, and what to
        measure."""
        session_name, service_name = split_config_id(config_id)
        found = self._record(session_name)
        service = found[1].session.service(service_name) if found else None
        if service is None:
            raise SessionNotFound(f"no service '{config_id}'")
        return service.launch()

    def session_hash_of(self, name: str) -> str | None:
        found = self._record(name)
        return found[1].hash if found else None

    def create_session(self, text: str, caller: str, source: str = "<session>") -> SessionRecord:
        session = parse_submitted(text, source)
        digest = session_hash(session)
        with self.records.store.transaction():
            if self._record(session.name) is not None:
                raise Conflict(
                    f"session '{session.name}' already exists; update it by naming its hash as predecessor"
                )
            check_namespace(session.name, caller, self._session_record, self._session_names)
            if session.predecessor is not None:
                raise PredecessorMismatch(
                    f"session '{session.name}' does not exist, so it cannot have a predecessor"
                )
            peers = pin_peers(session, text, source, self._session_record)
            record = SessionRecord(session.name, digest, text, caller, 1, session, peers)
            self._store_session(record, None, caller)
            key_der, cert_der = CertificateAuthority.create(f"veil session CA {session.name}").to_der()
            self.records.put(
                _CA,
                session.name,
                {"key": base64.b64encode(key_der).decode(), "cert": base64.b64encode(cert_der).decode()},
                None,
            )
            self._sync_secrets(session)
            self._sync_volumes(session)
            self.audit.append(
                "session.create", self.sim_mode, session=session.name, hash=digest, owner=caller
            )
        return record

    def _session_names(self, prefix: str) -> list[str]:
        return self.records.keys(_SESSION, prefix)

    def update_session(
        self, text: str, caller: str, source: str = "<session>", approvals: Sequence[Approval] = ()
    ) -> SessionRecord:
        session = parse_submitted(text, source)
        digest = session_hash(session)
        with self.records.store.transaction():
            found = self._record(session.name)
            if found is None:
                raise SessionNotFound(f"no session named '{session.name}' to update; create it first")
            version, current = found
            if not may(current.session.access_policy.update, caller, current.creator):
                raise AccessDenied(f"you may not update session '{session.name}'")
            if session.predecessor is None:
                raise PredecessorMismatch(
                    f"an update of session '{session.name}' must name its current hash: "
                    f"predecessor: {current.hash}"
                )
            if session.predecessor != current.hash:
                raise PredecessorMismatch(
                    f"predecessor {session.predecessor[:16]}… is not the current hash "
                    f"{current.hash[:16]}… of session '{session.name}' (changed meanwhile? "
                    "read it again and re-apply your change)"
                )
            decision = review_update(
                current.session.access_policy, current.creator, caller, session.name, digest, list(approvals)
            )
            if decision.refusal:
                raise AccessDenied(decision.refusal)
            peers = pin_peers(session, text, source, self._session_record)
            record = SessionRecord(
                session.name, digest, text, current.creator, current.revision + 1, session, peers
            )
            self._store_session(record, version, caller)
            self._sync_secrets(session, updating=True)
            self._sync_volumes(session)
            self.audit.append(
                "session.update",
                self.sim_mode,
                session=session.name,
                hash=digest,
                predecessor=current.hash,
                owner=caller,
                approvals=decision.approvers,
            )
        return record

    def _store_session(self, record: SessionRecord, expected_version: int | None, caller: str) -> None:
        value = {
            "hash": record.hash,
            "text": record.text,
            "creator": record.creator,
            "revision": record.revision,
            "peers": record.peers,
        }
        self.records.put(_SESSION, record.name, value, expected_version)
        version = {**value, "time": int(time.time()), "by": caller}
        self.records.put(_VERSION, f"{record.name}@{record.hash}", version, None)

    def session_history(self, name: str, caller: str) -> list[SessionVersion]:
        """Every stored version of session ``name``, oldest first, for whoever may read it now."""
        self.get_session(name, caller)
        versions = []
        for key in self.records.keys(_VERSION, f"{name}@"):
            found = self.records.get(_VERSION, key)
            if found is not None:
                raw = found[1]
                versions.append(
                    SessionVersion(
                        str(raw["hash"]),
                        int(raw["revision"]),
                        int(raw["time"]),
                        str(raw.get("by", raw["creator"])),
                        str(raw["text"]),
                    )
                )
        return sorted(versions, key=lambda v: v.revision)

    def _sync_secrets(self, session: Session, updating: bool = False) -> None:
        """Generate new or changed values; keep unchanged ones (private keys only with
        ``migrate``); issue every certificate again; drop removed secrets."""
        prefix = f"{session.name}#"
        wanted = {d.name: d for d in session.secrets if d.import_ is None}
        for key in self.records.keys(_SECRET, prefix):
            if key[len(prefix) :] not in wanted:
                self.records.delete(_SECRET, key)
        values: dict[str, dict[str, object]] = {}
        for name, definition in wanted.items():
            if definition.kind in ("x509", "x509-ca"):
                continue
            key = prefix + name
            fingerprint = definition_fingerprint(definition)
            existing = self.records.get(_SECRET, key)
            keep = existing is not None and existing[1]["fingerprint"] == fingerprint
            if definition.kind == "private-key":
                keep = keep and (not updating or bool(definition.migrate))
            if keep and existing is not None:
                values[name] = existing[1]
                continue
            raw = (
                new_private_key(definition)
                if definition.kind == "private-key"
                else make_secret_value(definition)
            )
            values[name] = {"fingerprint": fingerprint, "value": base64.b64encode(raw).decode()}
            self.records.put(_SECRET, key, values[name], existing[0] if existing else None)
        self._issue_certificates(session, values)

    def _issue_certificates(self, session: Session, values: dict[str, dict[str, object]]) -> None:
        """Issue every certificate secret of the session again (``values``: the other secrets)."""
        prefix = f"{session.name}#"
        session_ca = self._session_ca(session.name)
        for definition in certificate_order([d for d in session.secrets if d.import_ is None]):
            issued = {
                "fingerprint": definition_fingerprint(definition),
                **issue_for(definition, values, session_ca, self._clock()),
            }
            values[definition.name] = issued
            existing = self.records.get(_SECRET, prefix + definition.name)
            self.records.put(_SECRET, prefix + definition.name, issued, existing[0] if existing else None)

    def _renew_certificates(self, session: Session) -> None:
        """Issue the session's certificates again when one of them is due for renewal
        (docs/policy.md); audited. Called before a service of the session is provisioned."""
        prefix = f"{session.name}#"
        now = self._clock()
        due = []
        for definition in session.secrets:
            if definition.kind in ("x509", "x509-ca") and definition.import_ is None:
                found = self.records.get(_SECRET, prefix + definition.name)
                if found is not None and renewal_due(found[1], definition, now):
                    due.append(definition.name)
        if not due:
            return
        with self.records.store.transaction():
            self._issue_certificates(session, self._secret_records(session.name))
            self.audit.append("certificate.renew", self.sim_mode, session=session.name, due=sorted(due))

    def _secret_records(self, session_name: str) -> dict[str, dict[str, object]]:
        """The stored records of a session's own secrets, by secret name."""
        prefix = f"{session_name}#"
        records = {}
        for key in self.records.keys(_SECRET, prefix):
            found = self.records.get(_SECRET, key)
            if found is not None:
                records[key[len(prefix) :]] = found[1]
        return records

    def _own_renderer(self, session: Session) -> SecretRenderer:
        """Renders the session's own secrets (not its imports)."""
        own = {d.name: d for d in session.secrets if d.import_ is None}
        return renderer(own, self._secret_records(session.name))

    def _secret_renderer(self, record: SessionRecord) -> SecretRenderer:
        """Renders every secret of the session; an import is resolved (export and pin
        checked, SharingRefused otherwise) when a placeholder uses it."""
        own = self._own_renderer(record.session)
        imports = {d.name: d for d in record.session.secrets if d.import_ is not None}

        def render(name: str, fmt: str | None) -> bytes:
            if name not in imports:
                return own(name, fmt)
            exporter, source = imported_secret(record, imports[name], self._session_record)
            if source.kind in ("x509", "x509-ca"):
                self._renew_certificates(exporter.session)
            return self._own_renderer(exporter.session)(source.name, fmt)

        return render

    def _session_record(self, name: str) -> SessionRecord | None:
        found = self._record(name)
        return found[1] if found else None

    def sharing_warnings(self, record: SessionRecord) -> list[str]:
        """Imports of ``record`` that do not resolve and pins that do not match, now."""
        return sharing_warnings(record, self._session_record)

    def public_secret(self, session_name: str, secret_name: str, fmt: str | None) -> bytes:
        """A secret marked ``export_public``, for anyone; an x509 secret without its key."""
        record = self._session_record(session_name)
        definition = record.session.secret(secret_name) if record else None
        if record is None or definition is None or not definition.export_public:
            raise SessionNotFound(f"session '{session_name}' has no public secret '{secret_name}'")
        formats = [f for f in KIND_FORMATS[definition.kind] if (definition.kind, f) not in PRIVATE_FORMATS]
        chosen = fmt or formats[0]
        if chosen not in formats:
            raise NotFound(f"public secret '{secret_name}' is available as {', '.join(formats)}")
        return self._own_renderer(record.session)(secret_name, chosen)

    def audit_for(self, caller: str, sign: Callable[[bytes], bytes]) -> dict[str, object]:
        """An owner's view of the audit log: the entries about sessions ``caller`` may read
        now (by ``session`` or ``config_id``), with the signed head."""
        readable: dict[str, bool] = {}

        def keep(event: dict[str, object]) -> bool:
            name = event.get("session")
            if not isinstance(name, str):
                config_id = event.get("config_id")
                name = str(config_id).rpartition("/")[0] if isinstance(config_id, str) else None
            if not name:
                return False
            if name not in readable:
                record = self._session_record(name)
                readable[name] = record is not None and may(
                    record.session.access_policy.read, caller, record.creator
                )
            return readable[name]

        return self.audit.export_filtered(sign, keep)

    def session_ca_pem(self, session_name: str, caller: str) -> str:
        """The session CA's certificate, for whoever may read the session."""
        self.get_session(session_name, caller)
        return self._session_ca(session_name).certificate_pem

    def _sync_volumes(self, session: Session) -> None:
        """A key for every new volume (generated, or the session's ``key`` secret). Keys are
        never dropped: data written under a key must stay readable if the volume comes
        back into the session. ``initial_tag`` is the tag while none is recorded."""
        for definition in session.volumes:
            if definition.import_ is not None:
                continue
            key = f"{session.name}#{definition.name}"
            found = self.records.get(_VOLUME, key)
            if definition.key is not None:  # a volume made outside the CAS (docs/image.md)
                secret = self.records.get(_SECRET, f"{session.name}#{definition.key}")
                assert secret is not None  # the session checks name a defined secret
                given = str(secret[1]["value"])
                if found is not None and found[1]["key"] == given:
                    if found[1]["tag"] is None and definition.initial_tag is not None:
                        self.records.put(_VOLUME, key, {**found[1], "tag": definition.initial_tag}, found[0])
                    continue
                # a new key is a new volume: its tag starts again from the shipped state
                value = {"key": given, "tag": definition.initial_tag}
                self.records.put(_VOLUME, key, value, found[0] if found else None)
            elif found is None:
                value = {"key": base64.b64encode(os.urandom(32)).decode(), "tag": definition.initial_tag}
                self.records.put(_VOLUME, key, value, None)

    def volume_tag(self, session_name: str, volume: str) -> str | None:
        found = self.records.get(_VOLUME, f"{session_name}#{volume}")
        if found is None:
            raise CasError(f"session '{session_name}' has no volume '{volume}'")
        tag = found[1]["tag"]
        return None if tag is None else str(tag)

    def volume_tag_for_reader(self, session_name: str, volume: str, caller: str) -> str | None:
        """The tag the CAS holds for a volume of a session, for whoever may read the session
        (``veil remote fetch`` checks a job's output against it)."""
        self.get_session(session_name, caller)
        if self.records.get(_VOLUME, f"{session_name}#{volume}") is None:
            raise NotFound(f"session '{session_name}' has no volume '{volume}'")
        return self.volume_tag(session_name, volume)

    def volume_key_for_owner(self, session_name: str, volume: str, caller: str) -> bytes:
        """The key of a volume, for an owner who may update the session (recovery only)."""
        record = self.get_session(session_name, caller)
        if not may(record.session.access_policy.update, caller, record.creator):
            raise AccessDenied(f"you may not manage the volumes of session '{session_name}'")
        found = self.records.get(_VOLUME, f"{session_name}#{volume}")
        if found is None:
            raise CasError(f"session '{session_name}' has no volume '{volume}'")
        return base64.b64decode(found[1]["key"])

    def accept_volume_tag(self, session_name: str, volume: str, tag: str, caller: str, reason: str) -> None:
        """An owner accepts a volume's current state (after a crash): its tag becomes the
        expected one. Audited with the tag it replaces."""
        self.volume_key_for_owner(session_name, volume, caller)
        key = f"{session_name}#{volume}"
        with self.records.store.transaction():
            found = self.records.get(_VOLUME, key)
            assert found is not None
            version, stored = found
            self.records.put(_VOLUME, key, {**stored, "tag": tag}, version)
            self.audit.append(
                "volume.tag.accept",
                self.sim_mode,
                session=session_name,
                volume=volume,
                previous=stored["tag"],
                tag=tag,
                owner=caller,
                reason=reason,
            )

    def _bundle_volumes(self, record: SessionRecord, service: Service) -> list[BundleVolume]:
        volumes = []
        for used in service.volumes:
            holder, definition = volume_source(record, used.name, self._session_record)
            found = self.records.get(_VOLUME, f"{holder}#{definition.name}")
            if found is None:
                raise CasError(f"volume '{used.name}' of service '{service.name}' is not defined")
            stored = found[1]
            volumes.append(
                BundleVolume(
                    used.name,
                    used.path,
                    definition.mode,
                    base64.b64decode(stored["key"]),
                    stored["tag"],
                    definition.accept_fresh,
                    definition.freshness,
                    definition.readonly,
                )
            )
        return volumes

    def push_volume_tag(self, update: VolumeTagUpdate) -> None:
        """Record a volume's new tag for an attested runtime (compare-and-swap), or refuse."""
        try:
            session_name, service_name = split_config_id(update.config_id)
            facts = {
                "config_id": update.config_id,
                "volume": update.volume,
                "previous": update.previous,
                "tag": update.tag,
            }
            reason, fingerprint, key = self._tag_update_problem(update, session_name, service_name)
        except VeilError as exc:
            reason, fingerprint, facts = str(exc), "", {"config_id": update.config_id}
        if reason:
            self.audit.append("volume.tag.refuse", self.sim_mode, reason=reason, **facts)
            raise VolumeTagRefused(reason)
        with self.records.store.transaction():
            found = self.records.get(_VOLUME, key)
            assert found is not None
            version, stored = found
            current = stored["tag"]
            if not (current is None and update.previous is None) and not (
                current is not None
                and update.previous is not None
                and constant_time_equal(current, update.previous)
            ):
                reason = (
                    f"volume '{update.volume}' has moved on: the CAS holds a newer tag than the one "
                    "this update starts from (an old tag never overwrites a newer one)"
                )
                self.audit.append("volume.tag.refuse", self.sim_mode, reason=reason, **facts)
                raise VolumeTagRefused(reason)
            self.records.put(_VOLUME, key, {**stored, "tag": update.tag}, version)
            self.audit.append("volume.tag", self.sim_mode, certificate=fingerprint, **facts)

    def _tag_update_problem(
        self, update: VolumeTagUpdate, session_name: str, service_name: str
    ) -> tuple[str, str, str]:
        found = self._record(session_name)
        if found is None:
            return f"unknown session '{session_name}'", "", ""
        service = found[1].session.service(service_name)
        if service is None or all(v.name != update.volume for v in service.volumes):
            return (
                f"service '{service_name}' of session '{session_name}' does not use volume '{update.volume}'",
                "",
                "",
            )
        try:
            certificate = load_pem_chain(update.certificate_pem.encode())[0]
        except (VeilError, IndexError):
            return "the runtime certificate does not parse", "", ""
        ca = self._session_ca(session_name)
        try:
            verify_issued_by(certificate, ca.certificate)
        except SignatureInvalid:
            return f"the runtime certificate was not issued by the CA of session '{session_name}'", "", ""
        problem = check_valid_at(certificate, self._clock())
        if problem:
            return problem, "", ""
        uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if f"veil://{session_name}/{service_name}" not in uris.get_values_for_type(
            x509.UniformResourceIdentifier
        ):
            return f"the runtime certificate is not for {session_name}/{service_name}", "", ""
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not verify_ecdsa(
            key, update.signature, update.signed_bytes(), "sha256"
        ):
            return "the tag update is not signed by the runtime's instance key", "", ""
        try:
            holder, definition = volume_source(found[1], update.volume, self._session_record)
        except SharingRefused as exc:
            return str(exc), "", ""
        if definition.readonly:
            return f"volume '{update.volume}' is read-only: its tag does not move", "", ""
        return "", certificate_fingerprint(certificate), f"{holder}#{definition.name}"

    def _secret_lookup(self, session_name: str) -> dict[str, bytes]:
        records = self._secret_records(session_name)
        return {name: base64.b64decode(str(record["value"])) for name, record in records.items()}

    def _session_ca(self, session_name: str) -> CertificateAuthority:
        found = self.records.get(_CA, session_name)
        if found is None:
            raise CasError(f"session '{session_name}' has no CA")
        return _ca_from_der(base64.b64decode(found[1]["key"]), base64.b64decode(found[1]["cert"]))

    # -- platforms --------------------------------------------------------------------

    def register_sim_platform(self, public_key: bytes, caller: str, name: str = "") -> str:
        """Register a node's sim platform key (an administrator's action on a network CAS);
        sessions accept it only where ``security.sim_platforms`` names it."""
        platform_id = sha256_hex(public_key)
        with self.records.store.transaction():
            if self.records.get(_PLATFORM, platform_id) is not None:
                return platform_id
            value = {
                "kind": "sim",
                "public_key": base64.b64encode(public_key).decode(),
                "by": caller,
                "name": name,
                "time": int(time.time()),
            }
            self.records.put(_PLATFORM, platform_id, value, None)
            self.audit.append(
                "platform.register", True, platform="sim", platform_id=platform_id, owner=caller, name=name
            )
        return platform_id

    def remove_platform(self, platform_id: str, caller: str) -> None:
        """Forget a registered platform: its evidence is refused from now on; audited."""
        with self.records.store.transaction():
            if not self.records.delete(_PLATFORM, platform_id):
                raise NotFound(f"no platform {platform_id[:16]}… is registered")
            self.audit.append("platform.remove", self.sim_mode, platform_id=platform_id, owner=caller)

    def platforms(self) -> list[dict[str, object]]:
        """The registered platforms: id, kind, name, who registered them and when."""
        rows = []
        for platform_id in self.records.keys(_PLATFORM):
            found = self.records.get(_PLATFORM, platform_id)
            if found is not None:
                raw = found[1]
                rows.append(
                    {
                        "platform_id": platform_id,
                        "kind": raw["kind"],
                        "name": raw.get("name", ""),
                        "by": raw["by"],
                        "time": int(raw.get("time", 0)),
                    }
                )
        return rows

    def sim_platform_key(self, platform_id: str) -> bytes | None:
        """The public key of a registered sim platform, or None."""
        found = self.records.get(_PLATFORM, platform_id)
        if found is None or found[1]["kind"] != "sim":
            return None
        return base64.b64decode(found[1]["public_key"])

    # -- attestation ------------------------------------------------------------------

    def new_nonce(self) -> bytes:
        return self.nonces.issue()

    def attest(self, request: AttestationRequest) -> AttestationGrant:
        """Decide on a runtime's evidence; audit the decision; grant or raise the reason.

        The nonce's MAC and expiry are checked first; its "used" mark is written in the
        same transaction as the decision's audit entry (one commit per attestation), and a
        nonce found used there turns any decision into a refusal.
        """
        problem = self.nonces.check(request.nonce)
        try:
            decision = _Decision(None, problem, {}) if problem else self._decide(request)
        except VeilError as exc:
            decision = _Decision(None, str(exc), {})
        with self.records.store.transaction():
            replay = None if problem else self.nonces.use(request.nonce)
            if replay:
                decision = _Decision(None, replay, decision.details)
            details = {
                "config_id": request.config_id,
                "platform": request.evidence.platform,
                **decision.details,
            }
            if decision.grant is None:
                self.audit.append("attest.refuse", self.sim_mode, reason=decision.reason, **details)
            else:
                self.audit.append("attest.grant", decision.grant.sim, **details)
        if decision.grant is None:
            raise AttestationRefused(decision.reason)
        if self.result_signer is None:
            return decision.grant
        ear = self.result_signer.issue(details, decision.grant.sim, request.nonce)
        return dataclasses.replace(decision.grant, ear=ear)

    def _decide(self, request: AttestationRequest) -> _Decision:
        session_name, service_name = split_config_id(request.config_id)
        found = self._record(session_name)
        if found is None:
            return _Decision(None, f"unknown session '{session_name}'", {})
        record = found[1]
        service = record.session.service(service_name)
        if service is None:
            return _Decision(None, f"session '{session_name}' has no service '{service_name}'", {})
        if request.evidence.platform == "sim":
            return self._decide_sim(request, record, service)
        return self._decide_hardware(request, record, service)

    def _decide_sim(self, request: AttestationRequest, record: SessionRecord, service: Service) -> _Decision:
        session = record.session
        if not session.tolerates_sim:
            return _Decision(
                None,
                f"session '{session.name}' does not tolerate sim evidence (sim protects nothing; "
                "add 'sim' to security.tolerate for development only)",
                {},
            )
        try:
            claims = verify_sim_evidence(request.evidence.data, self.sim_platform_key)
        except EvidenceError as exc:
            return _Decision(None, str(exc), {})
        facts: dict[str, object] = {
            "session_hash": record.hash,
            "measurement": claims.measurement,
            "platform_id": claims.platform_id,
        }
        accepted = claims.platform_id in session.security.sim_platforms
        if not accepted and claims.platform_id not in self.implicit_sim_platforms:
            return _Decision(
                None,
                f"sim platform {claims.platform_id[:16]}… is not one session '{session.name}' accepts "
                "(an owner of the session names it under security.sim_platforms)",
                facts,
            )
        matched = [
            e
            for e in self._attestation_entries(record, service)
            if isinstance(e, SimAttestation) and constant_time_equal(e.measurement, claims.measurement)
        ]
        if not matched:
            return _Decision(
                None,
                f"measurement {claims.measurement} matches no attestation entry of service '{service.name}'",
                facts,
            )
        problem = self._device_problem(request, matched, facts)
        if problem is not None:
            return _Decision(None, problem, facts)
        return self._bind_and_grant(
            request, record, service, facts, claims.report_data, claims.measurement, sim=True
        )

    def _decide_hardware(
        self, request: AttestationRequest, record: SessionRecord, service: Service
    ) -> _Decision:
        from veil.cas.hardware_check import check_hardware  # noqa: PLC0415 (its docstring says why)

        checked = check_hardware(
            request.evidence,
            request.workload,
            record.session.security,
            lambda: self._attestation_entries(record, service),
            service.name,
            self.collateral_dir,
            self._clock(),
        )
        facts = {"session_hash": record.hash, **checked.facts} if checked.facts else {}
        if checked.reason is not None:
            return _Decision(None, checked.reason, facts)
        problem = self._device_problem(request, checked.matched, facts)
        if problem is not None:
            return _Decision(None, problem, facts)
        return self._bind_and_grant(
            request, record, service, facts, checked.report_data, request.workload, sim=False
        )

    def _device_problem(
        self, request: AttestationRequest, matched: Sequence[ConcreteAttestation], facts: dict[str, object]
    ) -> str | None:
        """The GPUs beside the CPU TEE: every device sent verified and bound to the nonce,
        and the GPUs of one matched entry present (docs/attestation.md)."""
        required = [entry.gpus for entry in matched]
        if not request.devices and not any(required):
            return None
        from veil.cas.device_check import check_devices  # noqa: PLC0415 (imported for GPU attestations only)

        checked = check_devices(request.devices, request.nonce, required, self._clock())
        if checked.facts:
            facts["gpus"] = checked.facts
        return checked.reason

    def _attestation_entries(self, record: SessionRecord, service: Service) -> list[ConcreteAttestation]:
        """The service's entries, those with placeholders filled in from the session's
        secrets (imports included); one that does not resolve refuses the attestation."""
        if not any(isinstance(e, TemplateAttestation) for e in service.attestation):
            return [e for e in service.attestation if not isinstance(e, TemplateAttestation)]
        render = self._secret_renderer(record)
        entries: list[ConcreteAttestation] = []
        for index, entry in enumerate(service.attestation):
            if not isinstance(entry, TemplateAttestation):
                entries.append(entry)
                continue
            where = f"service '{service.name}' attestation[{index}]"

            def fill(text: str, key: str, where: str = where) -> str:
                return substitute_text(text, render, f"{where}.{key}")

            try:
                entries.append(entry.resolve(fill))
            except ValueError as exc:
                raise CasError(f"{where}: {exc}") from None
        return entries

    @staticmethod
    def _binding_problem(request: AttestationRequest, report_data: bytes, workload: str) -> str | None:
        """report_data must bind this nonce, the runtime's two keys and its workload."""
        try:
            digest = bytes.fromhex(workload.removeprefix("sha256:"))
            expected = expected_report_data(request.nonce, request.key_digest, digest)
        except (ValueError, VeilError):
            return "the workload measurement is not a sha256 digest"
        if not constant_time_equal(expected, report_data):
            return "report_data does not bind this nonce, the runtime's keys and its measurement"
        return None

    def _bind_and_grant(
        self,
        request: AttestationRequest,
        record: SessionRecord,
        service: Service,
        facts: dict[str, object],
        report_data: bytes,
        workload: str,
        sim: bool,
    ) -> _Decision:
        """The last check, common to all platforms, then the grant."""
        problem = self._binding_problem(request, report_data, workload)
        if problem:
            return _Decision(None, problem, facts)
        session_name = record.name
        self._renew_certificates(record.session)
        instance_key = load_p256_public_key(request.instance_public_key_der)
        bundle = build_bundle(session_name, record.hash, service, self._secret_renderer(record))
        bundle = dataclasses.replace(bundle, volumes=self._bundle_volumes(record, service))
        ciphertext = seal_to_key(
            bundle.to_bytes(), request.bundle_public_key, bundle_info(request.nonce, request.config_id)
        )
        ca = self._session_ca(session_name)
        certificate = ca.issue_instance_certificate(instance_key, session_name, service.name)
        facts["certificate"] = certificate_fingerprint(certificate)
        grant = AttestationGrant(
            bundle_ciphertext=ciphertext,
            instance_certificate_pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
            session_ca_pem=ca.certificate_pem,
            sim=sim,
        )
        return _Decision(grant, "", facts)
