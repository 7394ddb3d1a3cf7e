"""The data owner's program: copies the owner's records into the protected volume.

Runs on the owner's premises, so its input is plaintext there; what it writes lands in the
volume, which is encrypted on disk and can be opened only by attested services of the
sessions the owner exports it to. Unmodified: it knows nothing of veil.
"""

import shutil
import sys
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
target.mkdir(parents=True, exist_ok=True)
shutil.copyfile(source, target / "records.csv")
print(f"ingest: {sum(1 for _ in source.open()) - 1} records stored in the protected volume")
