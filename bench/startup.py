"""Start-up time of the CLI, measured in one run: `vaezoo --help`, `vaezoo list`, `vaezoo plugins`
against `python -c "import torch"` (each a fresh process; median of several interleaved runs).

    python bench/startup.py --repeats 7
    python bench/startup.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "vaezoo --help": [sys.executable, "-m", "vaezoo", "--help"],
    "vaezoo list": [sys.executable, "-m", "vaezoo", "list"],
    "vaezoo plugins": [sys.executable, "-m", "vaezoo", "plugins"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def measure(repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the file cache once
        subprocess.run(argv, capture_output=True, check=True)
    for _ in range(repeats):
        for name, argv in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    times = measure(args.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    torch_time = median["import torch"]
    result = {
        "seconds": median,
        "vs_import_torch": {name: value / torch_time for name, value in median.items()},
        "all_runs": times,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"start-up, median of {args.repeats} fresh processes")
    for name, value in median.items():
        print(f"  {name:16s} {value:6.3f} s   {value / torch_time:5.2f} x import torch")


if __name__ == "__main__":
    main()
