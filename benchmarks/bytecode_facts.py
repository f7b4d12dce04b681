"""Whether this Python finds compiled bytecode for torch, or compiles its modules afresh in every process.

A fresh process that finds no `.pyc` (none was written at install, and it may not write one) spends
seconds compiling torch, Dynamo and Inductor sources before doing anything: `startup_probe.sh` prints this
beside its timings so a slow import can be told from a slow machine.
"""

import importlib.util
import os
import sys

# Found, not imported: importing torch would write its bytecode where this process may.
source = importlib.util.find_spec("torch").origin
package = os.path.dirname(source)
bytecode = importlib.util.cache_from_source(source)
print("sys.dont_write_bytecode:", sys.dont_write_bytecode)
print("PYTHONDONTWRITEBYTECODE:", os.environ.get("PYTHONDONTWRITEBYTECODE"))
print("sys.pycache_prefix:", sys.pycache_prefix)
print("torch at:", package, "writable:", os.access(package, os.W_OK))
print("bytecode of torch/__init__.py:", bytecode, "present:", os.path.exists(bytecode))
