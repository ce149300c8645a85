"""`python -m bench` (or `make bench`): runs every bench/bench_*.py in turn."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
failed = 0
for script in sorted(here.glob("bench_*.py")):
    print(f"\n## {script.name}\n", flush=True)
    failed |= subprocess.call([sys.executable, str(script)])
sys.exit(failed)
