"""`veil volume ...`: create, fill, read, check and mount protected volumes."""

import sys
from pathlib import Path

import click

from veil.cli.output import emit_json, note
from veil.cli.run import default_home, home_option
from veil.policy import load_session_file
from veil.runtime.run import EMBEDDED_OWNER, EmbeddedHome
from veil.volume import MODES, Volume, VolumeError, daemon, load_or_create_key_file, verify_volume
from veil.volume.copy import copy_in, copy_out, tree_size
from veil.volume.status import state_file
from veil.volume.volume import DEFAULT_CHUNK

_KEY = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File with the raw 32-byte volume key (create/encrypt: made with a fresh key if absent).",
)
_TAG = click.option("--tag", "tag", metavar="TAG", help="Refuse the volume unless its tag is TAG.")
_CHUNK = click.option(
    "--chunk-size",
    type=click.IntRange(512, 1 << 20),
    default=DEFAULT_CHUNK,
    show_default=True,
    help="Bytes per encrypted chunk: larger is faster for streaming, smaller for small random writes.",
)
_BLOCK = 1 << 20


def _existing_key(path: Path) -> bytes:
    if not path.exists():
        raise VolumeError(f"key file {path} does not exist")
    return load_or_create_key_file(path)


@click.group()
def volume() -> None:
    """Protected volumes: encrypted or authenticated, and fresh (see docs/volume-format.md)."""


@volume.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(MODES), default="encrypted", show_default=True)
@_KEY
@_CHUNK
def create(directory: Path, mode: str, key_file: Path, chunk_size: int) -> None:
    """Create an empty volume in DIRECTORY (which must be empty or absent); print its tag."""
    key = load_or_create_key_file(key_file)
    with Volume.create(directory, key, mode, chunk_size) as created:
        click.echo(created.tag)


@volume.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(MODES), default="encrypted", show_default=True)
@_KEY
@_CHUNK
def encrypt(source: Path, directory: Path, mode: str, key_file: Path, chunk_size: int) -> None:
    """Copy the tree SOURCE into a new volume in DIRECTORY; print the volume's tag.

    Everything is kept, as `cp -a` keeps it: files, directories, symbolic links, hard links,
    FIFOs, sockets and device nodes, owners, modes and times.
    """
    key = load_or_create_key_file(key_file)
    with (
        Volume.create(directory, key, mode, chunk_size) as target,
        click.progressbar(
            length=tree_size(source), label="encrypting", file=sys.stderr, show_pos=True
        ) as bar,
    ):
        copy_in(source, target, bar.update)
        tag = target.close()
    click.echo(tag)


@volume.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@_KEY
@_TAG
def decrypt(directory: Path, destination: Path, key_file: Path, tag: str | None) -> None:
    """Copy the tree of the volume in DIRECTORY out to DESTINATION (new or empty), every
    file type, hard link, mode and time; owners too when run as root."""
    if destination.exists() and any(destination.iterdir()):
        raise click.UsageError(f"{destination} is not empty")
    destination.mkdir(parents=True, exist_ok=True)
    with Volume.open(directory, _existing_key(key_file), tag, readonly=True) as source:
        total = sum(e.size for e in source.walk() if e.type == "file")
        with click.progressbar(length=total, label="decrypting", file=sys.stderr, show_pos=True) as bar:
            unowned = copy_out(source, destination, bar.update)
    if unowned:
        note(f"{unowned} owner(s) not restored: only root may give files to other users")


@volume.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_KEY
@_TAG
@click.option(
    "--repair",
    is_flag=True,
    help="Delete the objects no file refers to (left by a crash, or added by someone else), "
    "after the manifest authenticated; list them. Nothing a file refers to is touched.",
)
@click.option("--json", "as_json", is_flag=True)
def verify(directory: Path, key_file: Path, tag: str | None, repair: bool, as_json: bool) -> None:
    """Check every chunk of every file, and the tag; exit 1 naming each problem.

    With --repair, objects no file refers to are deleted (and listed as removed); the exit
    status is then 1 only for problems that remain.
    """
    try:
        current, problems = verify_volume(directory, _existing_key(key_file), tag, repair)
    except VolumeError as exc:
        if as_json:
            emit_json({"verified": False, "problems": [{"path": str(directory), "reason": str(exc)}]})
            raise SystemExit(1) from None
        raise
    removed = [p for p in problems if repair and p.orphan]
    left = [p for p in problems if p not in removed]
    if as_json:
        emit_json(
            {
                "verified": not left,
                "tag": current,
                "problems": [{"path": p.path, "reason": p.reason} for p in left],
                "removed": [p.path for p in removed],
            }
        )
    else:
        for problem in removed:
            click.echo(f"{problem.path}: removed ({problem.reason})", err=True)
        for problem in left:
            click.echo(f"{problem.path}: {problem.reason}", err=True)
        if not left:
            click.echo(f"volume intact, tag {current}")
    if left:
        raise SystemExit(1)


@volume.command("ls")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_KEY
@_TAG
@click.option("--json", "as_json", is_flag=True)
def ls_(directory: Path, key_file: Path, tag: str | None, as_json: bool) -> None:
    """List everything inside the volume: type, mode, owner, links, size, path (and the
    target of a symbolic link)."""
    with Volume.open(directory, _existing_key(key_file), tag, readonly=True) as source:
        entries = list(source.walk())
    if as_json:
        emit_json(
            [
                {
                    "path": e.path,
                    "type": e.type,
                    "size": e.size,
                    "mode": f"{e.mode:04o}",
                    "uid": e.uid,
                    "gid": e.gid,
                    "nlink": e.nlink,
                    "mtime": e.mtime,
                    **({"target": e.target} if e.target is not None else {}),
                }
                for e in entries
            ]
        )
        return
    letters = {"dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "chardev": "c", "blockdev": "b"}
    for e in entries:
        target = f" -> {e.target}" if e.target is not None else ""
        owner = f"{e.uid:>6} {e.gid:>6} {e.nlink:>3}"
        click.echo(f"{letters.get(e.type, '-')}{e.mode:04o} {owner} {e.size:>12} {e.path}{target}")


@volume.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_KEY
def tag(directory: Path, key_file: Path) -> None:
    """Print the volume's current tag (what a CAS or --tag compares)."""
    with Volume.open(directory, _existing_key(key_file), readonly=True) as source:
        click.echo(source.tag)


@volume.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_KEY
@_TAG
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted; then print the tag.")
def mount(directory: Path, mountpoint: Path, key_file: Path, tag: str | None, foreground: bool) -> None:
    """Mount the volume at MOUNTPOINT for unmodified programs; returns when the mount is ready.

    A volume whose tag is not TAG is refused before anything is mounted.
    """
    if foreground:
        serve = daemon.fuse_serve()
        opened = Volume.open(directory, _existing_key(key_file), tag)
        click.echo(serve(opened, mountpoint.resolve()))
        return
    mounted = daemon.start(directory, mountpoint, _existing_key(key_file), tag)
    note(f"mounted {directory} at {mountpoint} (tag {mounted.initial_tag[:16]}…)")


@volume.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds to retry while a process still uses the mount (default: say so at once).",
)
@click.option(
    "--lazy",
    is_flag=True,
    help="Detach the mount now even if in use; the volume is flushed and closed (its final "
    "tag recorded) when the last file there is closed.",
)
def unmount(mountpoint: Path, wait: float, lazy: bool) -> None:
    """Flush and unmount; print the volume's new tag as the last line.

    A mount still in use (a process with a file or its working directory there) is refused
    at once with exit 1 and nothing changed: close it, retry with --wait, or --lazy.
    """
    if not lazy:
        click.echo(daemon.stop(mountpoint, wait=wait))
        return
    final = daemon.detach(mountpoint)
    if final is None:
        note(
            f"{mountpoint} detached while in use: the volume is flushed and closed, its final tag "
            f"recorded in {state_file(mountpoint)}, when the last file there is closed"
        )
        return
    click.echo(final)


@volume.command()
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The session file that defines the volume.",
)
@click.option("--volume", "name", required=True, help="The volume's name in the session.")
@home_option
@click.option(
    "--reason", default="accepted after a crash", show_default=True, help="Recorded in the audit log."
)
def accept(policy: Path, name: str, home: Path | None, reason: str) -> None:
    """Accept a volume's current state as fresh (after a crash left it newer than the CAS's tag).

    Every chunk is verified with the key the CAS holds first; a damaged volume is refused.
    Only an owner who may update the session can do this, and it is audited.
    """
    session, _ = load_session_file(policy)
    paths = {v.path for s in session.services for v in s.volumes if v.name == name}
    if len(paths) != 1:
        raise click.UsageError(
            f"volume '{name}' must be used at exactly one path in {policy} (found {len(paths)})"
        )
    storage = Path(paths.pop())
    cas, _ = EmbeddedHome(home or default_home()).open()
    try:
        key = cas.volume_key_for_owner(session.name, name, EMBEDDED_OWNER)
        previous = cas.volume_tag(session.name, name)
        tag, problems = verify_volume(storage, key)
        if problems:
            for problem in problems:
                click.echo(f"{problem.path}: {problem.reason}", err=True)
            raise VolumeError(f"volume '{name}' at {storage} is damaged; it cannot be accepted")
        cas.accept_volume_tag(session.name, name, tag, EMBEDDED_OWNER, reason)
    finally:
        cas.close()
    note(f"volume '{name}': tag {str(previous)[:16]}… replaced by {tag[:16]}… (audited)")
    click.echo(tag)
