"""Atomic writes: a folder is replaced whole or not at all."""

import pytest

from diffusers_side.utils.atomic_io import atomic_directory


def test_atomic_directory_replaces_the_folder_on_success_and_keeps_it_on_error(tmp_path):
    target = tmp_path / "labels"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("killed while writing")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["labels"]
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["labels"]
