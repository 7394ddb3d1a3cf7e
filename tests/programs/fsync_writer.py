"""A test program that knows nothing about veil: appends ENTRY to a file, fsyncs it, says
so with its pid, then waits until the file named by $RELEASE exists (or forever)."""

import os
import sys
import time

path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "a") as journal:
    journal.write(f"entry {os.environ.get('ENTRY', '?')}\n")
    journal.flush()
    os.fsync(journal.fileno())
print(f"synced {os.getpid()}", flush=True)
release = os.environ.get("RELEASE", "")
while not (release and os.path.exists(release)):
    time.sleep(0.05)
