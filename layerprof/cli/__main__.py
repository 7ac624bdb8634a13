"""``python -m layerprof.cli``."""
import sys

from .commands import main

sys.exit(main())
