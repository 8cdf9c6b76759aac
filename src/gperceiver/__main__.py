"""``python -m gperceiver`` (also what ``torchrun -m gperceiver`` runs)."""

import sys

from .cli import main

sys.exit(main())
