"""One training job across processes started by `torchrun`: which rank this is, the process group, whose rows.

torchrun starts one copy of the command per process and tells each, in environment variables, its ``RANK``,
``LOCAL_RANK`` (its GPU on this machine) and the ``WORLD_SIZE``. Without torchrun this is a world of one and
nothing here imports torch: the tool asks ``world()`` before any stage loads.

The contract the runner and the training loop keep on top of this:
- every rank computes the same cache keys; rank 0 decides "cached, skip" and the others follow its answer;
- only rank 0 writes to the cache (staging, manifest, publish, ``latest``, resume checkpoints); the others
  wait at a barrier until what they must read is published;
- each rank trains on its own contiguous slice of every global batch (``rows``), so N ranks see exactly the
  rows, and draw exactly the noise, that one process would with the same global batch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that writes the cache, evaluates and draws the figures."""
        return self.rank == 0

    def rows(self, count: int) -> slice:
        """This rank's contiguous part of a global batch of ``count`` rows: parts differ by at most one row,
        together they cover every row once, in order. A batch with fewer rows than ranks leaves some ranks an
        empty slice; their losses must count for nothing (stages.training.rank_share)."""
        start = self.rank * count // self.size
        return slice(start, (self.rank + 1) * count // self.size)


def world() -> World:
    """This process's place in the job, from torchrun's environment (a world of one without it)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("WORLD_SIZE", 1)))


def join(device: str) -> str:
    """Join the job's process group once (gloo on CPU, nccl on CUDA) and return this rank's device:
    ``cuda:LOCAL_RANK`` on GPUs. A world of one joins nothing."""
    here = world()
    if here.size == 1:
        return device
    import torch
    import torch.distributed as dist

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{here.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def launch(nproc: int, arguments: list[str]) -> int:
    """Run ``pipeline ARGUMENTS`` as ``nproc`` ranks on this machine through ``torch.distributed.run --standalone``
    (what ``torchrun`` runs) and return its exit status. The launcher gets a session of its own, so a Ctrl-C or a
    SIGTERM reaches it once, from here, and it stops its ranks as when it is killed itself."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pipeline", *arguments]
    launcher = subprocess.Popen(command, start_new_session=True)
    try:
        return launcher.wait()
    except KeyboardInterrupt:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait()
        return 130


def _group():
    import torch.distributed as dist

    return dist if world().size > 1 and dist.is_initialized() else None


def from_main(value):
    """Rank 0's ``value`` on every rank (any picklable object); the value itself in a world of one."""
    dist = _group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (rank 0 has published what the others read next)."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def leave() -> None:
    """Tear the process group down at the end of the command. All ranks meet at a barrier first: rank 0 returns
    from its last broadcast before the others have read it, and must not close its connections while they read."""
    dist = _group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def end_rank() -> None:
    """In a world of more than one, end this process at once with status 0, its output flushed and without the
    interpreter's teardown; in a world of one, return. Call it when the rank's work is done and left (``leave``).

    Why: a model once wrapped in DistributedDataParallel keeps the gloo process group alive past
    destroy_process_group (torch 2.14: its worker and socket threads still run after the wrapper is freed and
    garbage-collected), so they are torn down with the interpreter and the C++ runtime, and that aborted a rank
    that had finished its work ("terminate called without an active exception", SIGABRT) twice in seven CI runs:
    torchrun then failed a job whose result was published. By this point the cache entry is written and synced,
    and the files are closed, so nothing is lost by skipping the teardown."""
    if world().size == 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
