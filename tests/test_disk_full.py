"""Specification of a full disk during training: one line, no partial checkpoint left filling the disk, the last
good checkpoint kept, and the same command resumes from it once there is space again."""
from __future__ import annotations

import errno

import torch

from helpers import assert_one_clear_error_line, cli, succeeded

TINY_VAE = ("--set", "vae.epochs=3", "--set", "vae.latent_dim=2", "--set", "vae.width=2")


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(outputs, monkeypatch):
    succeeded(cli(outputs, "prepare", "--count", "40"))
    real_save, saves = torch.save, []

    def save_until_the_disk_fills(state, file, *args, **kwargs):
        saves.append(file)
        if len(saves) == 2:  # the second resume checkpoint: some bytes land, then the disk is full
            file.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, file, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)

    result = cli(outputs, "run", "--stages", "vae", *TINY_VAE)

    [resume] = (outputs / "vae" / ".resume").iterdir()
    assert_one_clear_error_line(result, "no space left on device while writing the vae checkpoint in",
                                str(resume), "free space and run again")
    assert sorted(p.name for p in resume.iterdir()) == ["checkpoint.pt"]
    assert len(torch.load(resume / "checkpoint.pt", weights_only=True)["train"]) == 1  # epoch 1, the last good one

    monkeypatch.setattr(torch, "save", real_save)
    again = succeeded(cli(outputs, "run", "--stages", "vae", *TINY_VAE))
    assert "resuming from epoch 1 of 3" in again.output
