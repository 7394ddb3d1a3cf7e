"""The analyst's program: an aggregate over the data owner's records (never the rows).

Unmodified: it reads a CSV file at a path; veil mounts the owner's volume there only for
this attested program of the session the owner pinned.
"""

import csv
import statistics
import sys

with open(sys.argv[1], newline="") as f:
    rows = list(csv.DictReader(f))
ages = [int(row["age"]) for row in rows]
print(f"analysis: {len(rows)} records, mean age {statistics.mean(ages):.1f}")
