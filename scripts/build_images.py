"""`make images`: the container images of veil's own services, veil-cas and veil-las, as
OCI layouts and docker-archive tars under build/images (docs/kubernetes.md, "Images").

Run: .venv/bin/python scripts/build_images.py [--out build/images] [--revision REV] [--no-archive]
"""

import argparse
import subprocess
import sys
from pathlib import Path

from veil.image.services import build_all


def _revision() -> str:
    """The source revision for the labels: the git commit, with "-dirty" for local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/images"))
    parser.add_argument("--revision", default=None, help="the source revision label [default: git HEAD]")
    parser.add_argument("--no-archive", action="store_true", help="OCI layouts only (no skopeo needed)")
    args = parser.parse_args()
    for image in build_all(args.out, args.revision or _revision(), archives=not args.no_archive):
        where = f"oci:{image.layout}:{image.tag}" + (
            f", docker-archive:{image.archive}" if image.archive else ""
        )
        print(f"{image.name}:{image.tag} {image.manifest_digest} ({where})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
