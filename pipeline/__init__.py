"""The tool: command line, stage cache, runner and report. No maths here, and no torch at import time."""
