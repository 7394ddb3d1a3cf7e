#!/usr/bin/env python3
"""An ordinary program that knows nothing about veil.

It reads a database password from the environment and a config file from /etc, and
prints what it found. veil provides both, after attestation, from the session.
"""

import configparser
import hashlib
import os
import sys

CONFIG = "/etc/quickstart/app.ini"


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def main() -> int:
    password = os.environ.get("APP_DB_PASSWORD")
    if not password:
        print("app: no APP_DB_PASSWORD in my environment", file=sys.stderr)
        return 2
    config = configparser.ConfigParser()
    if not config.read(CONFIG):
        print(f"app: cannot read {CONFIG}", file=sys.stderr)
        return 2
    from_file = config["database"]["password"]
    print(f"app: user {config['database']['user']} at {config['database']['host']}")
    print(f"app: password from environment: {len(password)} characters, sha256 {fingerprint(password)}…")
    print(f"app: password from {CONFIG}: sha256 {fingerprint(from_file)}…")
    print(f"app: argument token: sha256 {fingerprint(sys.argv[1]) if len(sys.argv) > 1 else 'none'}…")
    same = password == from_file == (sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"app: environment, file and argument agree: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
