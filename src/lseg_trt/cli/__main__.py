"""`python -m lseg_trt.cli`, as the console script `lseg-trt`."""

from lseg_trt.cli import entry

entry()
