"""`python -m pipeline ...` is the `pipeline` command; `torchrun ... -m pipeline run ...` starts one per rank."""
from pipeline.cli import main

main()
