"""A test program that knows nothing about veil: appends a line to a journal file, prints it,
then sleeps JOURNAL_SLEEP seconds (default 0)."""

import os
import sys
import time

path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "a") as journal:
    journal.write(f"entry {os.environ.get('ENTRY', '?')}\n")
with open(path) as journal:
    sys.stdout.write(journal.read())
time.sleep(float(os.environ.get("JOURNAL_SLEEP", "0")))  # a program that outlives something
