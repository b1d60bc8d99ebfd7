"""`python -m mobilefacenet_k210` is the same as the `mfk210` console script."""
import sys

from mobilefacenet_k210.cli import main

sys.exit(main())
