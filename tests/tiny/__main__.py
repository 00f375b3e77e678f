"""``python -m tests.tiny KIND DIR``: write a tiny random pipeline of that family to DIR."""
import sys
from pathlib import Path

from tests.tiny import BUILDERS, build

if len(sys.argv) != 3 or sys.argv[1] not in BUILDERS:
    sys.exit(f"usage: python -m tests.tiny {{{','.join(BUILDERS)}}} DIR")
print(build(sys.argv[1], Path(sys.argv[2])))
