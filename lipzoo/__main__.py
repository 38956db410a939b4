"""``python -m lipzoo`` == ``lipzoo`` (also ``torchrun -m lipzoo train ...``)."""
import sys

from .cli import main

sys.exit(main())
