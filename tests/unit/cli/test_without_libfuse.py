"""A machine without libfuse3 runs every command but mounting (issue #27; the fresh-machine
check found `veil run --help` dying with `libfuse3.so.3: file too short`). The library is
hidden by putting an empty libfuse3.so.3 first on the loader's path."""

from pathlib import Path

import pytest

from tests.conftest import session_yaml, veil

COMMANDS = [
    ["--version"],
    ["run", "--help"],
    ["las", "serve", "--help"],
    ["audit", "--help"],
    ["volume", "--help"],
    ["volume", "verify", "--help"],
    ["session", "--help"],
    ["cas", "--help"],
    ["image", "--help"],
    ["evidence", "--help"],
    ["measure", "--help"],
    ["owner", "--help"],
]


@pytest.fixture
def no_libfuse(tmp_path: Path) -> dict[str, str]:
    hidden = tmp_path / "no-libfuse"
    hidden.mkdir()
    (hidden / "libfuse3.so.3").write_bytes(b"")
    return {"LD_LIBRARY_PATH": str(hidden)}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_command_that_mounts_nothing_needs_no_libfuse(
    command: list[str], no_libfuse: dict[str, str]
) -> None:
    result = veil(*command, env=no_libfuse)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr


def test_a_program_without_volumes_runs_and_mounting_says_what_is_missing(
    tmp_path: Path, no_libfuse: dict[str, str]
) -> None:
    policy = tmp_path / "session.yaml"
    policy.write_text(session_yaml(command=["/bin/true"]))
    ran = veil(
        "run",
        "--policy",
        str(policy),
        "--service",
        "app",
        env={**no_libfuse, "VEIL_HOME": str(tmp_path / "h")},
    )
    assert ran.returncode == 0, ran.stderr
    key = tmp_path / "key"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    (tmp_path / "mnt").mkdir()
    assert (
        veil("volume", "create", str(tmp_path / "vol"), "--key-file", str(key), env=no_libfuse).returncode
        == 0
    )
    mounted = veil(
        "volume",
        "mount",
        str(tmp_path / "vol"),
        str(tmp_path / "mnt"),
        "--key-file",
        str(key),
        env=no_libfuse,
    )
    assert mounted.returncode == 1
    assert "mounting a volume needs libfuse3" in mounted.stderr and "internal error" not in mounted.stderr
