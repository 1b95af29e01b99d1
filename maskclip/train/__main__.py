"""``python -m maskclip.train`` and ``torchrun --nproc_per_node N -m maskclip.train``."""
import sys

from .cli import main

sys.exit(main())
