"""Run as: python -m palign_ray COMMAND ..."""

import sys

from palign_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
