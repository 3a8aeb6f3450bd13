"""`python -m scratchllm ...`: the same as the `scratchllm` command (what `torchrun -m scratchllm train ...` runs)."""

import sys

from scratchllm.cli import main

sys.exit(main())
