"""A test program that knows nothing about veil: it prints what it was given as JSON.

SHOW_FILES (":"-separated paths) names files to read; SHOW_MODE chooses what to do after:
"exit" (exit with SHOW_EXIT, default 0) or "wait-term" (print "ready", exit 42 on SIGTERM).
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    files = {}
    for path in filter(None, os.environ.get("SHOW_FILES", "").split(":")):
        try:
            with open(path) as handle:
                files[path] = {"content": handle.read(), "mode": oct(os.stat(path).st_mode & 0o777)}
        except OSError as exc:
            files[path] = {"error": str(exc)}
    report = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "files": files}
    print(json.dumps(report), flush=True)
    mode = os.environ.get("SHOW_MODE", "exit")
    if mode == "wait-term":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        print("ready", flush=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.05)
        return 3
    return int(os.environ.get("SHOW_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
