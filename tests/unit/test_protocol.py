"""The configuration bundle survives its encoding exactly."""

from veil.protocol import BundleFile, BundleVolume, ConfigurationBundle


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
