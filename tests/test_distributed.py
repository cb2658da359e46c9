"""Specification of training under torchrun (CPU, gloo, 127.0.0.1 only): N ranks train what one process trains,
only rank 0 writes the cache, and a rank that dies ends the job with nothing published and a resumable state.

Equivalence is asserted on models without BatchNorm (the reference FC VAE and StackNN): BatchNorm normalises
each rank's rows by that rank's statistics, so a BatchNorm model is the same only with SyncBatchNorm (CUDA)."""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import cli, latest_entry, succeeded

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VAE = ("--stages", "vae", "--set", "vae.arch=fc", "--set", "vae.epochs=2", "--set", "vae.batch_size=32")
COLORIZE = ("--stages", "colorize", "--set", "colorize.epochs=1", "--set", "colorize.batch_size=32")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1"}  # a rank that crashes prints every thread's stack into the test's output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(outputs: Path, *args: str, nodes: int = 1, node_rank: int = 0, port: int = 0) -> subprocess.Popen:
    """`torchrun ... -m pipeline run ARGS`: 2 ranks on one node, or rank `node_rank` of `nodes` one-rank nodes."""
    launch = (["--standalone", "--nproc-per-node=2"] if nodes == 1 else
              [f"--nnodes={nodes}", "--nproc-per-node=1", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test", "--local-addr=127.0.0.1"])
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "pipeline", "run", *args,
               "--outputs", str(outputs)]
    return subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture
def launched():
    """Collects the torchrun agents a test starts, and kills any still running at its end (a failed test)."""
    agents: list[subprocess.Popen] = []
    yield agents
    for agent in agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def finished(process: subprocess.Popen, timeout: float = 180) -> str:
    """Its output, once it exits 0; the timeout only guards against a hang (a busy machine starts torch slowly)."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def weights(entry: Path) -> dict[str, torch.Tensor]:
    return torch.load(entry / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(one: Path, other: Path, tolerance: float) -> None:
    """Every tensor within `tolerance` relative (norm of the difference over the norm of the tensor)."""
    a, b = weights(one), weights(other)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).norm() <= tolerance * a[name].norm(), name


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """108 embedded faces (97 train: batches of 32 end with one row, so one of two ranks gets none), prepared
    once; each test copies the cache folder."""
    outputs = tmp_path_factory.mktemp("prepared") / "outputs"
    succeeded(cli(outputs, "prepare", "--count", "108"))
    return outputs


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory) -> Path:
    """The same at 8x8, where StackNN has 6 M parameters instead of 90 M: each step all-reduces 24 MB."""
    outputs = tmp_path_factory.mktemp("prepared_small") / "outputs"
    succeeded(cli(outputs, "prepare", "--count", "120", "--size", "8"))
    return outputs


def copy_of(prepared: Path, folder: Path) -> Path:
    subprocess.run(["cp", "-r", str(prepared), str(folder)], check=True)
    return folder


@pytest.fixture(scope="module")
def two_local_ranks(prepared, tmp_path_factory) -> Path:
    """The short FC VAE run by 2 ranks on one node: the reference of the single-process and multi-node tests."""
    outputs = copy_of(prepared, tmp_path_factory.mktemp("local") / "outputs")
    finished(torchrun(outputs, *VAE))
    return outputs


def two_rank_run(request, tmp_path: Path, stage_args: tuple[str, ...]) -> Path:
    if stage_args == VAE:
        return request.getfixturevalue("two_local_ranks")
    outputs = copy_of(request.getfixturevalue("prepared_small"), tmp_path / "double")
    finished(torchrun(outputs, *stage_args))
    return outputs


@pytest.mark.parametrize("stage_args", [VAE, COLORIZE], ids=["fc-vae", "stacknn"])
def test_two_ranks_with_half_batches_train_the_weights_of_one_process(request, tmp_path, stage_args):
    stage = stage_args[1]
    prepared = request.getfixturevalue("prepared" if stage == "vae" else "prepared_small")
    single = copy_of(prepared, tmp_path / "single")

    succeeded(cli(single, "run", *stage_args))
    double = two_rank_run(request, tmp_path, stage_args)

    one, two = latest_entry(single, stage), latest_entry(double, stage)
    assert one.name == two.name, "the world size does not enter the cache key"
    assert_same_weights(one, two, 1e-5)
    metrics = {"single": (one / "metrics.json").read_text(), "double": (two / "metrics.json").read_text()}
    assert '"world_size": 1' in metrics["single"] and '"world_size": 2' in metrics["double"]
    assert '"global_batch": 32' in metrics["double"]


def test_the_conv_colorizer_trains_under_torchrun(prepared_small, tmp_path):
    """Its objective calls the network through the DistributedDataParallel wrapper (BatchNorm per rank on CPU,
    so not the same weights as one process: see the module docstring)."""
    outputs = copy_of(prepared_small, tmp_path / "conv")

    finished(torchrun(outputs, *COLORIZE, "--set", "colorize.arch=conv", "--set", "colorize.loss=classify"))

    entry = latest_entry(outputs, "colorize")
    assert '"world_size": 2' in (entry / "metrics.json").read_text()
    assert any(name.startswith("head.") for name in weights(entry))


def test_two_one_rank_nodes_publish_the_entry_two_local_ranks_publish(prepared, two_local_ranks, tmp_path, launched):
    local, nodes = two_local_ranks, copy_of(prepared, tmp_path / "nodes")

    port = free_port()
    agents = [torchrun(nodes, *VAE, nodes=2, node_rank=rank, port=port) for rank in (0, 1)]
    launched.extend(agents)
    with ThreadPoolExecutor(len(agents)) as readers:  # both pipes drained at once: an agent blocked writing to a
        list(readers.map(finished, agents))  # full pipe would hold the other at torchrun's exit barrier

    entries = [p for p in (nodes / "vae").iterdir() if not p.name.startswith(".") and p.name != "latest"]
    assert [p.name for p in entries] == [latest_entry(local, "vae").name], "one published entry, the same key"
    assert_same_weights(latest_entry(local, "vae"), entries[0], 0.0)


def test_nproc_2_publishes_the_entry_torchrun_with_two_ranks_publishes(prepared, two_local_ranks, tmp_path, launched):
    outputs = copy_of(prepared, tmp_path / "nproc")

    command = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--nproc", "2", *VAE, "--outputs",
                                str(outputs)], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    launched.append(command)
    output = finished(command)

    assert "summary: ran vae" in output and output.count("summary:") == 1, "rank 0 alone reports"
    assert latest_entry(outputs, "vae").name == latest_entry(two_local_ranks, "vae").name
    assert_same_weights(latest_entry(two_local_ranks, "vae"), latest_entry(outputs, "vae"), 0.0)
    assert '"world_size": 2' in (latest_entry(outputs, "vae") / "metrics.json").read_text()


def rank_pids(agent: subprocess.Popen) -> list[int]:
    """The worker processes torchrun started (children of the agent)."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_killed_rank_ends_the_job_without_publishing_and_the_rerun_resumes(prepared, tmp_path, launched):
    outputs = copy_of(prepared, tmp_path / "outputs")
    long_run = ("--stages", "vae", "--set", "vae.arch=fc", "--set", "vae.epochs=12", "--set", "vae.batch_size=16")
    agent = torchrun(outputs, *long_run)
    launched.append(agent)
    resume, deadline = outputs / "vae" / ".resume", time.monotonic() + 90  # starting torch on a busy machine
    while not list(resume.glob("*/checkpoint.pt")) and time.monotonic() < deadline and agent.poll() is None:
        time.sleep(0.1)
    assert list(resume.glob("*/checkpoint.pt")), "rank 0 wrote a resume checkpoint"

    os.kill(rank_pids(agent)[-1], signal.SIGKILL)  # the last rank: not the one that writes
    output, _ = agent.communicate(timeout=60)

    assert agent.returncode != 0, output[-2000:]
    assert not (outputs / "vae" / "latest").exists(), "nothing published"
    rerun = finished(torchrun(outputs, *long_run))
    assert "resuming from epoch" in rerun
    assert (outputs / "vae" / "latest" / "model.pt").is_file()


# ----- the gan stage: two networks, each in DDP --------------------------------------------------------------------

GAN = ("--stages", "gan", "--set", "gan.epochs=1", "--set", "gan.width=4", "--set", "gan.batch_size=32")


class TinyGenerator(torch.nn.Module):
    """A conditional linear generator without BatchNorm, for which N ranks must train what one process does."""

    def __init__(self, noise_dim: int = 5, classes: int = 3):
        super().__init__()
        self.classes = classes
        self.net = torch.nn.Sequential(torch.nn.Linear(noise_dim + classes, 16), torch.nn.Tanh())

    def forward(self, z, labels):
        one_hot = torch.nn.functional.one_hot(labels, self.classes).float()
        return self.net(torch.cat([z, one_hot], 1)).view(-1, 1, 4, 4)


class TinyDiscriminator(torch.nn.Module):
    """With spectral norm, whose power-iteration buffers every rank must keep alike."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.classes = classes
        self.net = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(16 + classes, 1))

    def forward(self, x, labels):
        one_hot = torch.nn.functional.one_hot(labels, self.classes).float()
        return self.net(torch.cat([x.flatten(1), one_hot], 1)).squeeze(1)


def tiny_gan_weights(resume_dir: Path) -> dict[str, torch.Tensor]:
    """Two epochs of the gan loop on 22 images in global batches of 7 (rows split 3/4, and 0/1 at the end: the
    last batch leaves rank 0 no rows)."""
    from stages.gan_training import GanJob, train_gan
    from test_gan_training import QuietContext

    torch.manual_seed(0)
    generator, discriminator = TinyGenerator(), TinyDiscriminator()
    real = torch.rand(22, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    job = GanJob(generator, discriminator, real, torch.arange(22) % 3, noise_dim=5, epochs=2, batch_size=7,
                 lr=1e-2, seed=0)
    history = train_gan(job, QuietContext(resume_dir), torch.device("cpu"))
    return {**{f"g.{k}": v for k, v in generator.state_dict().items()},
            **{f"d.{k}": v for k, v in discriminator.state_dict().items()},
            "g_loss": torch.tensor(history.g_loss), "d_real": torch.tensor(history.d_real)}


def tiny_gan_rank(rank: int, port: int, folder: Path) -> None:
    """One of two gloo ranks (torch.multiprocessing.spawn's entry point): rank r writes its weights to r.pt, then
    ends as a `pipeline run` rank does."""
    from stages import distributed

    faulthandler.enable()  # a crash prints every thread's stack into the test's output
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    distributed.join("cpu")
    (folder / str(rank)).mkdir()
    torch.save(tiny_gan_weights(folder / str(rank)), folder / f"{rank}.pt")
    distributed.leave()
    distributed.end_rank()


def test_two_ranks_train_the_gan_one_process_trains(tmp_path):
    one = tiny_gan_weights(tmp_path)

    torch.multiprocessing.spawn(tiny_gan_rank, args=(free_port(), tmp_path), nprocs=2)

    for rank in (0, 1):
        two = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert one.keys() == two.keys()
        for name in one:
            assert (one[name] - two[name]).norm() <= 1e-5 * one[name].norm(), (rank, name)
    assert not list((tmp_path / "1").iterdir()), "only rank 0 writes resume checkpoints"


def test_two_ranks_run_the_gan_stage_and_rank_0_publishes_one_entry(prepared, tmp_path):
    outputs = copy_of(prepared, tmp_path / "outputs")

    finished(torchrun(outputs, *GAN))

    entries = [p for p in (outputs / "gan").iterdir() if not p.name.startswith(".") and p.name != "latest"]
    assert len(entries) == 1
    metrics = json.loads((entries[0] / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["global_batch"]) == (2, 32)
    assert json.loads((entries[0] / "manifest.json").read_text())["key_params"]["world_size"] == 2, \
        "BatchNorm in G: N ranks train another model than one process, so the world size is in the key"
    assert {"model.pt", "samples.png", "interpolation.png", "loss.png", "history.json"} <= {
        p.name for p in entries[0].iterdir()}
