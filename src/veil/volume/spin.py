"""Polling before sleeping, where the mount waits for something that comes within microseconds.

On a virtual machine whose idle vCPUs halt at once (guest halt-polling off:
``/sys/module/haltpoll/parameters/guest_halt_poll_ns`` is 0 on this project's machines),
a process that sleeps costs a halt, a host wake-up and an interrupt before it runs again:
a message between two processes on two vCPUs and back takes ~100 µs when both sleep in
``recv`` and ~11 µs when both poll (measured on this machine kind). The mount waits twice
per request for something that usually comes sooner than that:

- its loop for the next FUSE request (``REQUEST_NS``, veil.volume.session): a program
  reading 4 KiB at random offsets, one read at a time, sends its next request within
  microseconds of the reply;
- its loop for the read helper's part of a large read (``HELPER_NS``,
  veil.volume.helper.ReadHelper.collect): the helper opens 10/16 of each 1 MiB read and
  finishes within a millisecond of the loop.

So both ask without blocking for up to their window and only then sleep. An idle mount
costs nothing (a window is spent once after the last request); a busy one uses the CPU
it would otherwise leave to the host. Measured gains and costs: docs/benchmarks.md.
``VEIL_MOUNT_POLL_US=0`` in the mount's environment turns polling off (both windows);
another whole number sets the request window (the helper window stays 1 ms); anything
else keeps the default, with a warning in the mount's log.
"""

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
_DEFAULT_US = 200


def _request_us() -> int:
    value = os.environ.get("VEIL_MOUNT_POLL_US", str(_DEFAULT_US))
    if value.isdigit():
        return int(value)
    log.warning("VEIL_MOUNT_POLL_US=%r is not a number of microseconds: polling %d µs", value, _DEFAULT_US)
    return _DEFAULT_US


_REQUEST_US = _request_us()
REQUEST_NS = _REQUEST_US * 1000
HELPER_NS = 1_000_000 if _REQUEST_US else 0


def poll(attempt: Callable[[], T | None], window_ns: int) -> T | None:
    """``attempt()`` until it returns something or ``window_ns`` have passed (at least
    once); what it returned last (None: nothing came, sleep now)."""
    deadline = time.perf_counter_ns() + window_ns
    while (result := attempt()) is None and time.perf_counter_ns() < deadline:
        pass
    return result
