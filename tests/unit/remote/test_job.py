"""The parts of `veil remote` that need no host: SSH addresses, ssh's command line, job
names, placeholders, and the session a job creates (valid, closed, read-only code)."""

import os
from pathlib import Path

import pytest

from veil.policy.loader import check_session
from veil.remote import ssh
from veil.remote.job import (
    IMAGE_JOB_DIR,
    JobImage,
    JobSession,
    JobStore,
    check_job_name,
    session_name,
    substitute,
)
from veil.remote.ssh import RemoteError, SshHost


def test_host_addresses_parse_and_bad_ones_are_refused() -> None:
    host = SshHost.parse("ssh://render@farm.example:2222")
    assert (host.user, host.host, host.port) == ("render", "farm.example", 2222)
    assert str(host) == "ssh://render@farm.example:2222"
    assert SshHost.parse("farm").host == "farm"
    for bad in ("http://farm", "ssh://farm/path", "ssh://farm:port", "ssh://"):
        with pytest.raises(RemoteError):
            SshHost.parse(bad)


def test_ssh_checks_host_keys_strictly_and_forwards_nothing(tmp_path: Path) -> None:
    argv = SshHost.parse("ssh://u@h:1", known_hosts=tmp_path / "kh", identity=tmp_path / "id").argv("true")
    text = " ".join(argv)
    for option in (
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "ForwardAgent=no",
        "ClearAllForwardings=yes",
    ):
        assert option in text
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in text and "GlobalKnownHostsFile=/dev/null" in text
    assert argv[-3:] == ["--", "h", "true"]  # a host name never read as an option


def test_a_bulk_transfer_prefers_aes_gcm_among_the_ciphers_the_configuration_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("")
    host = SshHost.parse("ssh://u@h:1", config=config)
    monkeypatch.setattr(ssh, "_cpu_has_aes", lambda: True)
    ciphers = _ciphers(host.argv("tar -xf -", bulk=True))
    assert ciphers[:2] == ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    assert "chacha20-poly1305@openssh.com" in ciphers, "the others stay, after them"
    assert _ciphers(host.argv("true")) == [], "commands keep OpenSSH's order"
    config.write_text("Ciphers chacha20-poly1305@openssh.com,aes128-ctr\n")
    assert _ciphers(host.argv("tar -xf -", bulk=True)) == [], "never a cipher the configuration refuses"
    config.write_text("")
    monkeypatch.setattr(ssh, "_cpu_has_aes", lambda: False)
    assert _ciphers(host.argv("tar -xf -", bulk=True)) == [], "without AES instructions, OpenSSH's order"


def _ciphers(argv: list[str]) -> list[str]:
    chosen = [a.removeprefix("Ciphers=") for a in argv if a.startswith("Ciphers=")]
    return chosen[0].split(",") if chosen else []


def test_job_names_and_placeholders() -> None:
    assert check_job_name("render-1") == "render-1"
    for bad in ("Render", "-x", "a/b", "x" * 64, ""):
        with pytest.raises(RemoteError):
            check_job_name(bad)
    assert session_name("ab" * 32, "render") == "remote-abababababab/render"
    assert substitute(["/bin/b", "{code}/s.blend", "-o", "{output}/f_", "{{code}}x"], "/j") == [
        "/bin/b",
        "/j/code/s.blend",
        "-o",
        "/j/output/f_",
        "{/j/code}x",
    ]


def test_the_session_of_a_job_is_valid_closed_and_its_code_read_only() -> None:
    text = JobSession(
        name="remote-abababababab/render",
        command=["/usr/bin/blender", "-b", "/j/code/s.blend"],
        remote_dir="/j",
        attestation=[{"platform": "sim", "measurement": "sha256:" + "0" * 64}],
        keys={"code": b"\x01" * 32, "output": b"\x02" * 32},
        tags={"code": "a" * 64},
        tolerate=["sim"],
        sim_platforms=["b" * 64],
    ).text()
    session, problems = check_session(text)
    assert not problems, problems
    assert session.access_policy.read == ["CREATOR"] and session.access_policy.update == ["CREATOR"]
    volumes = {v.name: v for v in session.volumes}
    assert volumes["code"].readonly and volumes["code"].initial_tag == "a" * 64
    assert volumes["output"].accept_fresh and not volumes["output"].readonly
    service = session.services[0]
    assert service.tmpfs == ["/j/scratch"] and service.environment["HOME"] == "/j/scratch"


def test_the_session_of_a_job_in_an_image_measures_its_root_and_keeps_its_environment() -> None:
    text = JobSession(
        name="remote-abababababab/scan",
        command=["/bin/sh", "-c", "wc -c {IMAGE_JOB_DIR}/input/data"],
        remote_dir=IMAGE_JOB_DIR,
        attestation=[{"platform": "sim", "measurement": "sha256:" + "1" * 64}],
        keys={"input": b"\x01" * 32, "output": b"\x02" * 32},
        tags={"input": "a" * 64},
        tolerate=["sim"],
        sim_platforms=["b" * 64],
        image=JobImage(
            {"PATH": "/opt/app/bin:/bin", "GREETING": "hi"}, ["/tmp", "/var/log"], "sha256:" + "1" * 64
        ),
    ).text()
    session, problems = check_session(text)
    assert not problems, problems
    service = session.services[0]
    assert service.measure == "image"
    assert service.environment["PATH"] == "/opt/app/bin:/bin" and service.environment["GREETING"] == "hi"
    assert service.environment["HOME"] == f"{IMAGE_JOB_DIR}/scratch"
    assert service.tmpfs == [f"{IMAGE_JOB_DIR}/scratch", "/tmp", "/var/log"]
    assert {v.path for v in service.volumes} == {f"{IMAGE_JOB_DIR}/input", f"{IMAGE_JOB_DIR}/output"}


def test_keys_are_private_and_only_the_submitter_has_them(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "remote")
    (store.root / "j").mkdir(parents=True)
    key = os.urandom(32)
    store.save_key("j", "output", key)
    assert store.key("j", "output") == key
    assert store.key_file("j", "output").stat().st_mode & 0o777 == 0o600
    with pytest.raises(RemoteError, match="only the submitter"):
        store.key("j", "code")
    with pytest.raises(RemoteError, match="no job named"):
        store.load("other")


def test_a_missing_ssh_client_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RemoteError, match="openssh-client"):
        SshHost.parse("ssh://u@h").argv("true")
