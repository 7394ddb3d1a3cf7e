"""The launcher's check before it mounts in a chroot: a mount that propagates to other
namespaces (``shared:N``) means a tmpfs or an injected secret file would show up there,
and the launch is refused."""

from veil.runtime.launch import shared_mounts

PRIVATE = """\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
25 22 0:5 / /dev rw,nosuid - devtmpfs udev rw
26 22 0:22 / /proc rw,nosuid,nodev,noexec - proc proc rw
"""

SHARED = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:5 / /dev rw,nosuid master:2 - devtmpfs udev rw
26 22 0:22 / /proc rw,nosuid shared:13 - proc proc rw
"""


def test_private_mounts_pass_and_shared_ones_are_named() -> None:
    assert shared_mounts(PRIVATE) == []
    assert shared_mounts(SHARED) == ["/", "/proc"]  # a slave (master:N) receives, never sends


def test_a_shared_word_after_the_separator_does_not_count() -> None:
    assert shared_mounts("30 22 0:40 / /data rw - fuse shared:weird rw\n") == []
