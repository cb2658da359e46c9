"""The tool: command line, stage cache, runner and report. No maths here, and no torch at import time."""

import os

# Set here, on the package's import, because torch reads it at its first allocation: before any stage loads
# torch, and in the bench scripts too, so they measure what the CLI runs. Big tensors (StackNN's 313 MB
# weight gradient, made afresh each step) then come in 2 MB pages: a tenth of the page faults. The colorize stage
# measured 61 -> 70, 50 -> 60 and 50 -> 54 img/s in three alternating pairs. A user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# numpy's OpenBLAS would start one thread per core in every decode worker of `prepare` (already one process per
# core): the threads spin against each other and the Lanczos resize (stages/sources.py, two small matrix
# products) takes a hundred times as long (docs/decisions.md). Every numpy product the stages do is that small;
# torch has its own thread pool. Set before numpy loads, like the line above. A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
