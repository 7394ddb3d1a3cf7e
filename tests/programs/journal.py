"""A test program that knows nothing about veil: appends a line to a journal file, prints it."""

import os
import sys

path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "a") as journal:
    journal.write(f"entry {os.environ.get('ENTRY', '?')}\n")
with open(path) as journal:
    sys.stdout.write(journal.read())
