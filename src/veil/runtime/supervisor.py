"""The supervisor: starts the program, forwards signals, reaps, returns the exit code.

A program that needs a private mount namespace (injected files, scratch directories) is
started through the launcher (``veil.runtime.launch``, a second interpreter); any other is
fork+exec'ed directly (``subprocess``: nothing runs in the child but async-signal-safe
calls), which saves that interpreter's start (~25 ms of every run; docs/benchmarks.md).

The program runs in its own session (so a terminal's Ctrl-C reaches it once, through us);
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded. A program killed by
signal N gives exit code 128+N, as a shell would report it.
"""

import base64
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType

from veil.interpreter import own_module
from veil.protocol import BundleFile
from veil.runtime.errors import RuntimeFailure

FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass(frozen=True)
class LaunchSpec:
    executable: str
    argv: list[str] = field(repr=False)
    environment: dict[str, str] = field(repr=False)
    pwd: str
    files: list[BundleFile] = field(repr=False)
    #: scratch directories: a tmpfs each, holding a copy of what was there
    tmpfs: list[str] = field(default_factory=list)


@dataclass
class _Placeholders:
    """Empty files and directories created so that injected files have a mount point."""

    files: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)

    def prepare(self, target: str) -> None:
        if os.path.isdir(target):
            raise RuntimeFailure(f"cannot inject file {target}: a directory is there")
        parent = os.path.dirname(target)
        missing: list[str] = []
        while parent and not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            self.directories.append(directory)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self.files.append(target)

    def remove(self) -> None:
        for path in self.files:
            try:
                if os.path.getsize(path) == 0:
                    os.unlink(path)
            except OSError:
                pass
        for directory in reversed(self.directories):
            with suppress(OSError):
                os.rmdir(directory)


@contextmanager
def _forwarding(pid: int) -> Iterator[None]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _forwarding_when_started() -> Iterator[Callable[[int], None]]:
    """Forward signals to a child not started yet: one that arrives before the pid is known
    is kept and sent once it is. The handlers are installed before the fork, so the forwarded
    signals are caught, not ignored, there and the program starts with their defaults."""
    pending: list[int] = []
    target: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not target:
            pending.append(signum)
            return
        with suppress(ProcessLookupError):
            os.kill(target[0], signum)

    def started(pid: int) -> None:
        target.append(pid)
        while pending:
            with suppress(ProcessLookupError):
                os.kill(pid, pending.pop(0))

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        yield started
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exec_and_wait(spec: LaunchSpec) -> int:
    """Start the program with fork+exec in a session of its own, with the forwarded signals
    at their defaults and SIGPIPE restored (``restore_signals``)."""
    with _forwarding_when_started() as started:
        try:
            child = subprocess.Popen(
                spec.argv,
                executable=spec.executable,
                env=spec.environment,
                cwd=spec.pwd,
                start_new_session=True,
                restore_signals=True,
            )
        except OSError as exc:
            if exc.filename == spec.pwd:
                raise RuntimeFailure(f"cannot enter working directory {spec.pwd}: {exc.strerror}") from None
            raise RuntimeFailure(f"cannot execute {spec.executable}: {exc.strerror}") from None
        started(child.pid)
        return exit_code(child.wait())


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _spec_bytes(spec: LaunchSpec, staging: str) -> bytes:
    return json.dumps(
        {
            "executable": spec.executable,
            "argv": spec.argv,
            "environment": spec.environment,
            "pwd": spec.pwd,
            "staging": staging,
            "tmpfs": spec.tmpfs,
            "files": [
                {"path": f.path, "mode": f.mode, "content": base64.b64encode(f.content).decode()}
                for f in spec.files
            ],
        }
    ).encode()


def supervise(spec: LaunchSpec) -> int:
    """Run the program described by ``spec`` to its end; return its exit code."""
    if not spec.files and not spec.tmpfs and not signal.pthread_sigmask(signal.SIG_BLOCK, []):
        # (the launcher also empties a signal mask veil inherited; fork+exec would pass it on)
        return _exec_and_wait(spec)
    placeholders = _Placeholders()
    staging = tempfile.mkdtemp(prefix="veil-files-")
    try:
        for injected in spec.files:
            placeholders.prepare(injected.path)
        return _start_and_wait(spec, staging)
    finally:
        placeholders.remove()
        os.rmdir(staging)


def _start_and_wait(spec: LaunchSpec, staging: str) -> int:
    spec_read, spec_write = os.pipe()
    status_read, status_write = os.pipe()
    argv, launcher_env = own_module("veil.runtime.launch", str(spec_read), str(status_write))
    # Block forwarded signals until the handlers know the child's pid; the launcher unblocks.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        child = subprocess.Popen(
            argv,
            pass_fds=(spec_read, status_write),
            start_new_session=True,
            env=launcher_env,
        )
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        raise
    finally:
        os.close(spec_read)
        os.close(status_write)
    with _forwarding(child.pid):
        try:
            with os.fdopen(spec_write, "wb") as pipe:
                pipe.write(_spec_bytes(spec, staging))
        except BrokenPipeError:
            pass  # the launcher died early; its status pipe says why
        with os.fdopen(status_read, "rb") as status:
            failure = status.read()
        returncode = child.wait()
    if failure:
        raise RuntimeFailure(failure.decode("utf-8", "replace"))
    return exit_code(returncode)
