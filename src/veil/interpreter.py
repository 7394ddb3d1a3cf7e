"""Running one of veil's own modules in a fresh interpreter (the launcher, the embedded CAS
server): the same Python, in isolated mode unless veil runs from a source tree (then
PYTHONPATH is kept and only the user's site directory left out), and -B, since writing
bytecode would change a measured image (docs/image.md)."""

import os
import sys


def own_module(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment that run ``python -m module args...``."""
    environment = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
    isolation = "-sB" if environment else "-IB"
    return [sys.executable, isolation, "-m", module, *args], environment
