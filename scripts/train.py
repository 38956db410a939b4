#!/usr/bin/env python
"""Train a lipzoo model: `python scripts/train.py --recipe sll_cpu --out runs/sll_xs` (see `--help`)."""
import sys

from lipzoo.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
