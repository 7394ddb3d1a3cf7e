"""Protocol messages survive their encodings exactly; malformed wire fields are refused."""

import json

import pytest

from veil.protocol import (
    AttestationGrant,
    AttestationRequest,
    BundleFile,
    BundleVolume,
    ConfigurationBundle,
    Evidence,
    LaunchDescriptor,
    ProtocolError,
    VolumeTagUpdate,
)


def test_every_bundle_field_round_trips() -> None:
    bundle = ConfigurationBundle(
        session="a/b",
        service="web",
        session_hash="ab" * 32,
        argv=["/bin/prog", "--flag"],
        environment={"K": "V"},
        pwd="/srv",
        files=[BundleFile("/etc/x", 0o400, b"\x00secret")],
        allow_extra_args=True,
        volumes=[BundleVolume("data", "/data", "encrypted", b"k" * 32, None, True)],
        network={"servers": [{"listen": "127.0.0.1:1", "forward": "127.0.0.1:2"}], "clients": []},
    )
    assert ConfigurationBundle.from_bytes(bundle.to_bytes()) == bundle


def test_wire_forms_round_trip_and_reject_bad_fields() -> None:
    request = AttestationRequest("s/a", b"n" * 32, Evidence("sim", b"{}"), b"k", b"b" * 32, "sha256:00")
    assert AttestationRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    gpu = Evidence("nvidia-gpu", b'{"report": ""}')
    with_gpu = AttestationRequest("s/a", b"n" * 32, Evidence("sim", b"{}"), b"k", b"b" * 32, "", (gpu, gpu))
    assert AttestationRequest.from_json(json.loads(json.dumps(with_gpu.to_json()))) == with_gpu
    assert "devices" not in request.to_json()  # what runtimes without GPUs send is unchanged
    grant = AttestationGrant(b"ct", "cert", "ca", sim=True)
    assert AttestationGrant.from_json(grant.to_json()) == grant
    update = VolumeTagUpdate("s/a", "data", None, "t", "pem", b"sig")
    assert VolumeTagUpdate.from_json(update.to_json()) == update
    for broken in (
        {**request.to_json(), "nonce": "not base64!"},
        {**request.to_json(), "config_id": 7},
        {k: v for k, v in request.to_json().items() if k != "evidence"},
        {**request.to_json(), "evidence": {"platform": "sim"}},
        {**request.to_json(), "devices": {"platform": "nvidia-gpu"}},
        {**request.to_json(), "devices": [{"platform": "nvidia-gpu"}]},
        {**request.to_json(), "devices": [gpu.__dict__] * 17},
    ):
        with pytest.raises(ProtocolError):
            AttestationRequest.from_json(broken)
    with pytest.raises(ProtocolError):
        VolumeTagUpdate.from_json({**update.to_json(), "previous": 3})
    with pytest.raises(ProtocolError):
        AttestationGrant.from_json({**grant.to_json(), "sim": "yes"})


def test_launch_descriptor_round_trip_and_malformed_fields() -> None:
    launch = LaunchDescriptor(["/bin/sh", "/app/run.sh"], "/app", None, "image", ["/app/data"])
    assert LaunchDescriptor.from_json(launch.to_json()) == launch
    for broken in (
        {"command": [], "pwd": "/"},
        {"command": ["/bin/sh"], "pwd": "/", "measure": "disk"},
        {"command": ["/bin/sh"], "pwd": "/", "volume_paths": "/data"},
        {"command": ["/bin/sh"]},
    ):
        with pytest.raises(ProtocolError):
            LaunchDescriptor.from_json(broken)
