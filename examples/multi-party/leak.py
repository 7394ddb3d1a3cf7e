"""A modified analysis that would print the raw rows: what the pin is there to stop."""

import sys

with open(sys.argv[1]) as f:
    print(f.read())
