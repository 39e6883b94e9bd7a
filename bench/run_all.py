"""All benchmarks in one go, on the same real images, written as a markdown section to paste into
docs/performance.md: training images/s per precision and fast path vs the plain PyTorch loop vs the
notebook recipe, test loss vs fp32 (for `--precision auto`), sampling images/s, peak memory, and
start-up time of the CLI vs `import torch`.

    python bench/run_all.py --data-dir ../shared/data/cifar10-images --out bench/results.md
    python bench/run_all.py --device cuda --images 50000 --epochs 2 --out bench/results-cuda.md

Run it on a quiet machine: only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--configs", default=None, help="passed to bench/precision.py")
    parser.add_argument("--startup-repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    args = parser.parse_args()

    from precision import markdown

    command = [
        sys.executable,
        str(BENCH / "precision.py"),
        "--json",
        f"--device={args.device}",
        f"--images={args.images}",
        f"--epochs={args.epochs}",
    ]
    if args.data_dir:
        command.append(f"--data-dir={args.data_dir}")
    if args.configs:
        command.append(f"--configs={args.configs}")
    training = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    startup = json.loads(
        subprocess.run(
            [sys.executable, str(BENCH / "startup.py"), "--json", f"--repeats={args.startup_repeats}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )

    lines = [
        "## Training, sampling and memory",
        "",
        markdown(training),
        "",
        "## Start-up (median of fresh processes)",
        "",
    ]
    lines += ["| command | seconds | vs `import torch` |", "| --- | ---: | ---: |"]
    for name, seconds in startup["seconds"].items():
        lines.append(f"| `{name}` | {seconds:.3f} | {startup['vs_import_torch'][name]:.2f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
