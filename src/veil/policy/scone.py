"""Converting a session written for SCONE CAS (session language 0.3) into a veil session.

What maps one to one is converted; what has no equivalent is dropped or approximated with a
warning that says so (docs/policy.md, "Importing SCONE sessions"). The result is a plain
document; the caller validates it like any other session.
"""

import base64
import binascii
import re
import shlex
from typing import Any

from cryptography import x509

from veil.crypto.x509ca import spki_sha256
from veil.policy.errors import PolicyError, PolicyProblem
from veil.policy.loader import render_path
from veil.policy.model import SERVICE_NAME, SESSION_NAME
from veil.policy.yamlsource import load_yaml

_PLACEHOLDER = re.compile(
    r"\$\$SCONE::(?P<name>[A-Za-z0-9_\-]+?)(?:(?P<sep>[:.])(?P<format>[A-Za-z0-9_\-]+))?\$\$"
)

#: SCONE tolerance -> veil tolerance (None: no equivalent)
_TOLERANCES: dict[str, str | None] = {
    "debug-mode": "debug-mode",
    "hyperthreading": "smt",
    "outdated-tcb": "outdated-tcb",
    "software-hardening-needed": "sw-hardening-needed",
    "insecure-configuration": "configuration-needed",
    "insecure-igpu": None,
    "aepic-leak": None,
}
#: SCONE placeholder format -> veil format, per kind of the secret (None: the default)
_FORMATS = {
    "crt": "crt",
    "chain": "chain",
    "key": "key",
    "privatekey": "key",
    "pkcs12": "pkcs12",
    "der": "der",
    "hex": "hex",
    "base64": "base64",
    "base64url": "base64url",
}
_SECRET_KINDS = ("ascii", "binary", "private-key", "x509", "x509-ca")
_SECRET_KEYS = {
    "name",
    "kind",
    "size",
    "value",
    "key_type",
    "migrate",
    "private_key",
    "issuer",
    "common_name",
    "dns",
    "export",
    "export_public",
    "import",
    "valid_for",
    "endpoint",
}


class _Converter:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.kinds: dict[str, str] = {}

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    # -- names and placeholders ----------------------------------------------------------

    def session_name(self, value: Any, where: str) -> str:
        name = str(value)
        fixed = re.sub(r"[^a-z0-9._/-]", "-", name.lower()).strip("/")
        fixed = "/".join(p if p and p[0].isalnum() else f"s{p}" for p in fixed.split("/"))
        if fixed != name:
            self.warn(f"{where}: session name '{name}' becomes '{fixed}' (veil names are lower-case)")
        if not SESSION_NAME.fullmatch(fixed):
            self.warn(f"{where}: '{fixed}' is still not a valid session name; rename it")
        return fixed

    def simple_name(self, value: Any, what: str) -> str:
        name = str(value)
        fixed = re.sub(r"[^a-z0-9._-]", "-", name.lower())
        if not fixed[:1].isalnum():
            fixed = f"x{fixed}"
        if fixed != name:
            self.warn(f"{what} '{name}' becomes '{fixed}' (veil names are lower-case)")
        assert SERVICE_NAME.fullmatch(fixed)
        return fixed

    def text(self, value: Any, where: str) -> str:
        """A string with its $$SCONE::...$$ placeholders rewritten as $$VEIL::...$$."""

        def replace(match: re.Match[str]) -> str:
            name, fmt = match["name"], match["format"]
            if fmt is None:
                return f"$$VEIL::{name}$$"
            kind = self.kinds.get(name)
            mapped = _FORMATS.get(fmt.lower())
            if mapped == "key" and kind == "private-key":
                mapped = "pem"
            if mapped is None:
                self.warn(f"{where}: placeholder format '{fmt}' of '{name}' has no equivalent; default used")
                return f"$$VEIL::{name}$$"
            return f"$$VEIL::{name}:{mapped}$$"

        return _PLACEHOLDER.sub(replace, str(value))

    # -- parts ---------------------------------------------------------------------------

    def owners(self, values: Any, where: str) -> list[str]:
        owners: list[str] = []
        for value in values or []:
            text = str(value).strip()
            if text in ("CREATOR", "ANY", "NONE"):
                owners.append(text)
            elif "BEGIN CERTIFICATE" in text:
                certificate = x509.load_pem_x509_certificate(text.encode())
                owners.append(spki_sha256(certificate.public_key()))  # type: ignore[arg-type]
            elif re.fullmatch(r"[0-9a-f]{64}", text):
                owners.append(text)
            else:
                self.warn(f"{where}: owner '{text[:40]}' is neither a certificate nor a key hash; dropped")
        return owners

    def access_policy(self, policy: Any) -> dict[str, Any]:
        policy = policy or {}
        converted = {
            "read": self.owners(policy.get("read", ["CREATOR"]), "access_policy.read"),
            "update": self.owners(policy.get("update", ["CREATOR"]), "access_policy.update"),
        }
        if "create_sessions" in policy:
            self.warn(
                "access_policy.create_sessions: veil lets whoever may 'update' a session create "
                "sessions under its name; dropped"
            )
        for key in sorted(set(policy) - {"read", "update", "create_sessions"}):
            self.warn(f"access_policy.{key}: no equivalent; dropped")
        return converted

    def security(self, security: Any) -> dict[str, Any]:
        attestation = (security or {}).get("attestation") or {}
        tolerate: list[str] = []
        for item in attestation.get("tolerate") or []:
            mapped = _TOLERANCES.get(str(item))
            if mapped is None:
                self.warn(f"security.attestation.tolerate: '{item}' has no equivalent; dropped")
            else:
                tolerate.append(mapped)
        if attestation.get("mode") == "none":
            tolerate.append("sim")
            self.warn(
                "security.attestation.mode none (no attestation): mapped to tolerating sim evidence, "
                "which protects nothing either (development only)"
            )
        converted: dict[str, Any] = {"tolerate": sorted(set(tolerate))}
        ignored = attestation.get("ignore_advisories")
        if isinstance(ignored, list) and ignored and ignored != ["*"]:
            converted["allowed_advisories"] = [str(a) for a in ignored]
        for key in sorted(set(attestation) - {"tolerate", "mode", "ignore_advisories"}):
            self.warn(f"security.attestation.{key}: no equivalent; dropped")
        return converted

    def attestation(self, service: dict[str, Any], name: str) -> list[dict[str, Any]]:
        entries = [{"platform": "sgx", "mr_enclave": str(m)} for m in service.get("mrenclaves") or []]
        for entry in service.get("attestation") or []:
            for mrenclave in entry.get("mrenclave") or []:
                entries.append({"platform": "sgx", "mr_enclave": str(mrenclave)})
            if entry.get("mrsigner") is not None:
                sgx: dict[str, Any] = {"platform": "sgx", "mr_signer": str(entry["mrsigner"])}
                sgx["isv_prod_id"] = int(entry.get("isvprodid", 0))
                if entry.get("isvsvn") is not None:
                    sgx["isv_svn"] = {"min": int(entry["isvsvn"])}
                entries.append(sgx)
        if service.get("platforms"):
            self.warn(f"service '{name}': platforms (pinned platform ids) have no equivalent; dropped")
        if not entries:
            self.warn(
                f"service '{name}' has no mrenclave: add an attestation entry (e.g. from `veil measure`)"
            )
        return entries

    def service(self, service: dict[str, Any], images: dict[str, dict[str, Any]]) -> dict[str, Any]:
        name = self.simple_name(service.get("name"), "service")
        command = service.get("command")
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command or []]
        if not argv:
            self.warn(f"service '{name}' has no command: add one (veil runs exactly the policy's command)")
        converted: dict[str, Any] = {
            "name": name,
            "attestation": self.attestation(service, name),
            "command": [self.text(a, f"service '{name}' command") for a in argv],
            "environment": {
                str(k): self.text(v, f"service '{name}' environment {k}")
                for k, v in (service.get("environment") or {}).items()
            },
        }
        if service.get("pwd"):
            converted["pwd"] = str(service["pwd"])
        image = images.get(str(service.get("image_name")), {}) if service.get("image_name") else {}
        if service.get("image_name") and not image:
            self.warn(f"service '{name}': image '{service['image_name']}' is not defined in the session")
        files = [
            {
                "path": str(f["path"]),
                "content": self.text(f.get("content", ""), f"injection file {f['path']}"),
            }
            for f in image.get("injection_files") or []
        ]
        if files:
            converted["files"] = files
        volumes = [
            {"name": self.simple_name(v["name"], "volume"), "path": str(v["path"])}
            for v in image.get("volumes") or []
        ]
        if volumes:
            converted["volumes"] = volumes
        if any(k.startswith("fspf") for k in service):
            self.warn(
                f"service '{name}': fspf_path/fspf_key/fspf_tag have no equivalent; veil protects files "
                "with volumes (`veil image convert --encrypt DIR`), and data in a SCONE file system "
                "must be copied into one"
            )
        for key in sorted(
            set(service) - {"name", "command", "environment", "pwd", "image_name", "mrenclaves"}
        ):
            if key not in ("attestation", "platforms") and not key.startswith("fspf"):
                self.warn(f"service '{name}': '{key}' has no equivalent; dropped")
        return converted

    def exports(self, value: Any, where: str) -> list[dict[str, Any]]:
        targets = value if isinstance(value, list) else [value]
        converted = []
        for item in targets:
            target = {"session": item} if isinstance(item, str) else item
            entry: dict[str, Any] = {"session": self.session_name(target.get("session"), where)}
            if target.get("session_hash"):
                self.warn(
                    f"{where}: the pin session_hash of '{entry['session']}' is a SCONE hash; set the "
                    "veil hash of the imported session (veil session hash)"
                )
            converted.append(entry)
        return converted

    def volume(self, volume: dict[str, Any]) -> dict[str, Any]:
        name = self.simple_name(volume.get("name"), "volume")
        if volume.get("import"):
            source = volume["import"]
            return {
                "name": name,
                "import": {
                    "session": self.session_name(source.get("session"), f"volume '{name}' import"),
                    "volume": self.simple_name(source.get("volume"), "volume"),
                },
            }
        converted: dict[str, Any] = {"name": name, "mode": "encrypted", "accept_fresh": True}
        if volume.get("export"):
            converted["export"] = self.exports(volume["export"], f"volume '{name}' export")
        if volume.get("fspf_tag") or volume.get("fspf_key"):
            self.warn(
                f"volume '{name}': its existing SCONE contents (fspf_tag, fspf_key) cannot be read by "
                "veil; it starts empty"
            )
        return converted

    def secret(self, secret: dict[str, Any]) -> dict[str, Any]:
        name = str(secret.get("name"))
        kind = str(secret.get("kind", ""))
        where = f"secret '{name}'"
        if secret.get("import"):
            source = secret["import"]
            if kind not in _SECRET_KINDS:
                self.warn(
                    f"{where}: imported without a kind; set the kind the exporter defines (ascii assumed)"
                )
                kind = "ascii"
            return {
                "name": name,
                "kind": kind,
                "import": {
                    "session": self.session_name(source.get("session"), f"{where} import"),
                    "secret": str(source.get("secret")),
                },
            }
        if kind not in _SECRET_KINDS:
            self.warn(f"{where}: kind '{kind}' has no equivalent; made an ascii secret of 32 characters")
            return {"name": name, "kind": "ascii", "size": 32}
        converted: dict[str, Any] = {"name": name, "kind": kind}
        for key in ("size", "key_type", "migrate", "private_key", "common_name", "dns", "export_public"):
            if secret.get(key) is not None:
                converted[key] = secret[key]
        if secret.get("issuer") is not None:
            converted["issuer"] = secret["issuer"]
        if secret.get("value") is not None:
            converted.update(self.explicit_value(kind, str(secret["value"]), where))
        if secret.get("endpoint") in ("server", "client"):
            converted["usage"] = [secret["endpoint"]]
        if secret.get("valid_for") is not None:
            days = _days(str(secret["valid_for"]))
            if days is None:
                self.warn(
                    f"{where}: valid_for '{secret['valid_for']}' is not understood; default validity used"
                )
            else:
                converted["valid_days"] = days
        if secret.get("export"):
            converted["export"] = self.exports(secret["export"], f"{where} export")
        for key in sorted(set(secret) - _SECRET_KEYS):
            self.warn(f"{where}: '{key}' has no equivalent; dropped")
        return converted

    def explicit_value(self, kind: str, value: str, where: str) -> dict[str, Any]:
        if kind != "binary":
            return {"value": value}
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", value):
            return {"value": value, "encoding": "hex"}
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            self.warn(
                f"{where}: the binary value is neither hex nor base64; stored as its UTF-8 bytes in hex"
            )
            return {"value": value.encode().hex(), "encoding": "hex"}
        return {"value": value, "encoding": "base64"}

    def session(self, data: dict[str, Any]) -> dict[str, Any]:
        self.kinds = {str(s.get("name")): str(s.get("kind", "")) for s in data.get("secrets") or []}
        if data.get("predecessor"):
            self.warn(
                "predecessor: a SCONE session hash means nothing to veil; dropped (create the session anew)"
            )
        images = {str(i.get("name")): i for i in data.get("images") or []}
        document: dict[str, Any] = {
            "name": self.session_name(data.get("name"), "name"),
            "version": "1",
            "access_policy": self.access_policy(data.get("access_policy")),
            "security": self.security(data.get("security")),
            "services": [self.service(s, images) for s in data.get("services") or []],
            "volumes": [self.volume(v) for v in data.get("volumes") or []],
            "secrets": [self.secret(s) for s in data.get("secrets") or []],
        }
        known = {"name", "version", "predecessor", "access_policy", "security", "services", "images"}
        for key in sorted(set(data) - known - {"volumes", "secrets"}):
            self.warn(f"'{key}' has no equivalent; dropped")
        return document


def _days(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)\s*(d|days?|y|years?|h|hours?)?", text.strip())
    if match is None:
        return None
    number, unit = int(match[1]), (match[2] or "d")[0]
    return max(1, number * 365 if unit == "y" else number // 24 if unit == "h" else number)


#: the shape of the parts the converter reads (a key ending in "!" is required); a scalar
#: may be any YAML scalar (names are made strings), an export one session, one mapping or a
#: list of either. Anything else is reported at its line before converting.
_SCALAR = (str, int, float, bool)
_EXPORTS = "exports"
_SHAPE: dict[str, Any] = {
    "services": [
        {
            "name!": _SCALAR,
            "command": (str, list),
            "environment": {"*": _SCALAR},
            "pwd": _SCALAR,
            "image_name": _SCALAR,
            "mrenclaves": [_SCALAR],
            "attestation": [{"mrenclave": [_SCALAR], "mrsigner": _SCALAR, "isvprodid": int, "isvsvn": int}],
        }
    ],
    "images": [
        {
            "name!": _SCALAR,
            "injection_files": [{"path!": _SCALAR, "content": _SCALAR}],
            "volumes": [{"name!": _SCALAR, "path!": _SCALAR}],
        }
    ],
    "volumes": [{"name!": _SCALAR, "import": {"session!": _SCALAR, "volume!": _SCALAR}, "export": _EXPORTS}],
    "secrets": [
        {
            "name!": _SCALAR,
            "kind": _SCALAR,
            "import": {"session!": _SCALAR, "secret!": _SCALAR},
            "export": _EXPORTS,
        }
    ],
    "security": {"attestation": {"tolerate": [_SCALAR], "mode": _SCALAR}},
    "access_policy": {"read": [_SCALAR], "update": [_SCALAR]},
}
_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "a number"}


def _at(path: tuple[str | int, ...]) -> str:
    return f"{render_path(path)}: " if path else ""


def _found(value: Any) -> str:
    return _NAMES.get(type(value), "a scalar" if isinstance(value, _SCALAR) else type(value).__name__)


def _shape_problems(doc: Any, value: Any, spec: Any, path: tuple[str | int, ...]) -> list[PolicyProblem]:
    if value is None:
        return []
    if spec == _EXPORTS:
        items = value if isinstance(value, list) else [value]
        bad = [i for i, item in enumerate(items) if not isinstance(item, (str, dict))]
        if not bad and all(isinstance(i, str) or isinstance(i.get("session"), _SCALAR) for i in items):
            return []
        return [
            doc.problem(
                path, f"{_at(path)}an export names a session: a name, {{session: NAME}}, or a list of them"
            )
        ]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [doc.problem(path, f"{_at(path)}expected a mapping, found {_found(value)}")]
        problems = []
        for key, sub in spec.items():
            name = key.rstrip("!")
            if name == "*":
                for item, inner in value.items():
                    problems += _shape_problems(doc, inner, sub, (*path, str(item)))
            elif name in value:
                problems += _shape_problems(doc, value[name], sub, (*path, name))
            elif key.endswith("!"):
                problems.append(doc.problem(path, f"{_at(path)}'{name}' is missing"))
        return problems
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [doc.problem(path, f"{_at(path)}expected a list, found {_found(value)}")]
        return [p for i, item in enumerate(value) for p in _shape_problems(doc, item, spec[0], (*path, i))]
    if not isinstance(value, spec):
        wanted = " or ".join(
            sorted({_NAMES.get(t, "a scalar") for t in (spec if isinstance(spec, tuple) else (spec,))})
        )
        return [doc.problem(path, f"{_at(path)}expected {wanted}, found {_found(value)}")]
    return []


def convert_scone_session(text: str, source: str = "<scone session>") -> tuple[dict[str, Any], list[str]]:
    """(the veil session document, warnings) for a SCONE session's YAML text."""
    doc = load_yaml(text, source)
    data = doc.data
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(source, 1, 1, "a SCONE session is a mapping (name, version, ...)")])
    problems = _shape_problems(doc, data, _SHAPE, ())
    if problems:
        raise PolicyError(problems)
    version = str(data.get("version", ""))
    converter = _Converter()
    if not version.startswith("0.3"):
        converter.warn(f"version '{version}': written for session language 0.3; converted as such")
    try:
        return converter.session(data), converter.warnings
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        message = f"not a SCONE session this converter understands ({type(exc).__name__}: {exc})"
        raise PolicyError([PolicyProblem(source, 0, 0, message)]) from None
