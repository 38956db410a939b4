"""``python -m lipzoo.cli`` == ``lipzoo`` (``make run`` uses it)."""
import sys

from . import main

sys.exit(main())
