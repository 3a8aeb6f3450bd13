"""`python -m scratchllm.cli ...`: the same as the `scratchllm` command."""

import sys

from scratchllm.cli import main

sys.exit(main())
