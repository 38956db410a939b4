#!/usr/bin/env python
"""Train a lipzoo model: `python scripts/train.py --recipe sll_cpu --out runs/sll_xs` == `lipzoo train ...`."""
import sys

from lipzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
