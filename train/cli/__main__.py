"""`python -m train.cli ...`: the `energy-attn` command."""
import sys

from train.cli import main

sys.exit(main())
