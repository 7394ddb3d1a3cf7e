"""The scratch directories a converted image's session gets (``tmpfs``, docs/image.md)."""

import pytest

from veil.image.convert import ConvertOptions, _protected, _scratch
from veil.image.errors import ImageError


def scratch(*args: str, encrypt: tuple[str, ...] = (), defaults: bool = True) -> list[str]:
    options = ConvertOptions(
        "oci:a", "oci:b", "s/x", "app", list(encrypt), tmpfs=list(args), default_tmpfs=defaults
    )
    return _scratch(options, _protected(options))


def test_the_defaults_and_the_paths_asked_for() -> None:
    assert scratch() == ["/tmp", "/var/cache", "/var/log", "/var/tmp"]
    assert scratch("/run", "/srv/cache/") == [
        "/run",
        "/srv/cache",
        "/tmp",
        "/var/cache",
        "/var/log",
        "/var/tmp",
    ]
    assert scratch("/run", defaults=False) == ["/run"]


def test_a_default_that_overlaps_a_protected_path_is_left_out() -> None:
    assert scratch(encrypt=("/var/log/app",)) == ["/tmp", "/var/cache", "/var/tmp"]
    assert scratch(encrypt=("/var/cache/app",)) == ["/tmp", "/var/log", "/var/tmp"]


@pytest.mark.parametrize("bad", ["relative", "/", "/var/../etc"])
def test_a_bad_path_is_refused(bad: str) -> None:
    with pytest.raises(ImageError, match="tmpfs path"):
        scratch(bad)


def test_a_path_asked_for_may_not_overlap_a_protected_one() -> None:
    with pytest.raises(ImageError, match="overlaps the protected path /app"):
        scratch("/app/cache", encrypt=("/app",))
