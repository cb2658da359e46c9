"""Specification of stages.spool: rows spooled to disk come back as a .npy of the chosen rows, in order."""
import numpy as np
import pytest

from stages import spool
from stages.spool import RowSpool


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows of 4x4x3 bytes, so a few rows cross several chunk boundaries."""
    monkeypatch.setattr(spool, "CHUNK_BYTES", 3 * 48)


def test_saved_subset_is_the_chosen_rows_in_order(tmp_path, small_chunks):
    rows = np.random.default_rng(0).integers(0, 256, (11, 4, 4, 3), dtype=np.uint8)
    chosen = np.array([0, 2, 3, 7, 10])
    with RowSpool(tmp_path / "scratch", (4, 4, 3), np.uint8) as spooled:
        for start in (0, 4, 5):  # appends of 4, 1 and 6 rows
            spooled.append(rows[start:{0: 4, 4: 5, 5: 11}[start]])
        spooled.save(tmp_path / "subset.npy", chosen)
        spooled.save(tmp_path / "all.npy")
    assert np.array_equal(np.load(tmp_path / "subset.npy"), rows[chosen])
    assert np.array_equal(np.load(tmp_path / "all.npy", mmap_mode="r"), rows)
    assert not (tmp_path / "scratch").exists()


def test_rows_of_another_shape_are_refused(tmp_path):
    with RowSpool(tmp_path / "scratch", (4, 4), np.uint8) as spooled, pytest.raises(ValueError, match="spool holds"):
        spooled.append(np.zeros((2, 4, 4, 3), np.uint8))
