"""`python -m lseg_trt.cli`, as the console script `lseg-trt`."""

import sys

from lseg_trt.cli import main

sys.exit(main())
