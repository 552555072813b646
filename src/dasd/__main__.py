"""`python -m dasd ...` is the same as the `dasd` command (useful under `accelerate launch -m dasd`)."""

import sys

from dasd.cli import main

sys.exit(main())
