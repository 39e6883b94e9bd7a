"""`python -m vaezoo` (what torchrun starts)."""

from vaezoo.cli import main

main()
