"""The session that goes with a converted image (docs/image.md)."""

import base64
import re
from dataclasses import dataclass, field

import yaml

from veil.policy import parse_session

HEADER = """\
# Session for the confidential image {destination}, written by `veil image convert`.
# It holds the keys of the image's protected volumes: keep this file private, and delete it
# once the session is on the CAS (`veil session create FILE`).
# The attestation entry is for sim mode (development). On hardware, replace it with the
# platform's entry and keep `workload:` set to the measurement below.
"""


@dataclass(frozen=True)
class TemplateVolume:
    name: str
    path: str
    mode: str
    key: bytes = field(repr=False)
    tag: str
    #: "code": shipped in the image, read-only, the tag never moves; "data": created on
    #: first use in storage the host provides, writable, tracked by the CAS
    kind: str = "code"


def volume_name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", path.strip("/").lower()).strip("-._") or "volume"
    name, counter = base, 2
    while name in taken:
        name, counter = f"{base}-{counter}", counter + 1
    taken.add(name)
    return name


def session_yaml(
    session: str,
    service: str,
    measurement: str,
    command: list[str],
    environment: dict[str, str],
    pwd: str,
    volumes: list[TemplateVolume],
    destination: str,
    sim_platforms: list[str] | None = None,
    tmpfs: list[str] | None = None,
) -> str:
    security: dict[str, object] = {"tolerate": ["sim"]}
    if sim_platforms:
        security["sim_platforms"] = sorted(set(sim_platforms))
    document: dict[str, object] = {
        "name": session,
        "version": "1",
        "security": security,
        "services": [
            {
                "name": service,
                "measure": "image",
                "attestation": [{"platform": "sim", "measurement": measurement}],
                "command": command,
                "environment": environment,
                "pwd": pwd,
                **({"volumes": [{"name": v.name, "path": v.path} for v in volumes]} if volumes else {}),
                **({"tmpfs": list(tmpfs)} if tmpfs else {}),
            }
        ],
    }
    if volumes:
        document["volumes"] = [
            {"name": v.name, "mode": v.mode, "key": f"{v.name}-key", "initial_tag": v.tag, "readonly": True}
            if v.kind == "code"
            else {"name": v.name, "mode": v.mode, "accept_fresh": True}
            for v in volumes
        ]
        keys = [
            {
                "name": f"{v.name}-key",
                "kind": "binary",
                "value": base64.b64encode(v.key).decode(),
                "encoding": "base64",
            }
            for v in volumes
            if v.kind == "code"
        ]
        if keys:
            document["secrets"] = keys
    text = HEADER.format(destination=destination) + yaml.safe_dump(
        document, sort_keys=False, default_flow_style=False, width=100
    )
    parse_session(text, "<generated session>")  # what we write must be a valid session
    return text
