"""Run-folder label images (recon/data/run_files.py): lossless uint16 round trip and clear errors."""
import numpy as np
import pytest

from recon.data.run_files import has_label_images, label_path, missing_label_frames, read_label_images, write_label_images


def test_round_trip_and_missing(tmp_path):
    sem = np.array([[0, 1, 2], [65535, 3, 4]], np.int64)
    inst = np.array([[0, 0, 7], [1000, 0, 2]], np.int32)
    assert not has_label_images(tmp_path)
    write_label_images(tmp_path, ["000000", "000003"], [sem, sem], (x for x in [inst, inst]))
    assert has_label_images(tmp_path)
    s, i = read_label_images(tmp_path, "000003", size=(3, 2))
    assert s.tolist() == sem.tolist() and i.tolist() == inst.tolist()
    assert missing_label_frames(tmp_path, ["000000", "000001", "000003"]) == ["000001"]
    label_path(tmp_path, "instance", "000000").unlink()
    assert missing_label_frames(tmp_path, ["000000", "000003"]) == ["000000"]
    assert not list((tmp_path / "labels" / "semantic").glob(".*"))  # no temporary files left behind


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_label_images(tmp_path, ["000000"], [np.full((2, 2), 70000)], [np.zeros((2, 2), int)])
    with pytest.raises(AssertionError, match="differ"):
        write_label_images(tmp_path, ["000000"], [np.zeros((2, 2), int)], [np.zeros((3, 2), int)])
    write_label_images(tmp_path, ["000000"], [np.zeros((2, 4), int)], [np.zeros((2, 4), int)])
    with pytest.raises(ValueError, match="differs"):
        read_label_images(tmp_path, "000000", size=(3, 2))
