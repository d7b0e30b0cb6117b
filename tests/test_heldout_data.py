"""training/make_heldout_data.py: the held-out target's data is the same bytes every time, RGB, 16x16, 250 images."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import subprocess_env
from diffusers_side.storage.data import load_image_dataset

SCRIPT = Path(__file__).parents[1] / "training" / "make_heldout_data.py"
spec = importlib.util.spec_from_file_location("make_heldout_data", SCRIPT)
make_heldout_data = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = make_heldout_data  # dataclasses look their module up there
spec.loader.exec_module(make_heldout_data)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory) -> Path:
    return make_heldout_data.main(["--output", str(tmp_path_factory.mktemp("heldout") / "data")])


def test_same_bytes_twice_and_the_stated_count_size_and_mode(default_data, tmp_path):
    again = make_heldout_data.main(["--output", str(tmp_path / "again")])
    first = folder_bytes(default_data)
    assert first == folder_bytes(again)
    pngs = sorted(name for name in first if name.endswith(".png"))
    assert len(pngs) == 250 == len(first) - 1  # the images and metadata.jsonl, nothing else
    for name in pngs:
        with PIL.Image.open(default_data / name) as image:
            assert (image.mode, image.size) == ("RGB", (16, 16))
    rows = [json.loads(line) for line in (default_data / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == pngs
    assert {row["photo"] for row in rows} == {"china", "flower"}


def test_tiles_are_the_photos_pixels_and_pass_the_contrast_filter(default_data):
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    shrunk = {Path(name).stem: np.asarray(PIL.Image.fromarray(image).resize((320, 213), PIL.Image.BOX))
              for name, image in zip(sample.filenames, sample.images)}
    rows = [json.loads(line) for line in (default_data / "metadata.jsonl").read_text().splitlines()]
    for row in rows[::25]:
        tile = np.asarray(PIL.Image.open(default_data / row["file_name"]))
        expected = shrunk[row["photo"]][row["top"] : row["top"] + 16, row["left"] : row["left"] + 16]
        np.testing.assert_array_equal(tile, expected)
        assert (tile / 255.0).std(axis=(0, 1)).mean() >= 0.04
    assert len({(row["photo"], row["left"], row["top"]) for row in rows}) == 250  # no tile twice


def test_loads_as_an_rgb_reference(default_data):
    dataset = load_image_dataset(default_data)
    assert len(dataset) == 250
    assert dataset[0]["image"].mode == "RGB"


def test_another_seed_draws_other_tiles(default_data, tmp_path):
    other = make_heldout_data.main(["--output", str(tmp_path / "seed1"), "--seed", "1"])
    assert folder_bytes(other) != folder_bytes(default_data)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-images", "5000"], "--num-images 5000 is more than the 269 tiles"),
        (["--resolution", "8"], "--resolution must be at least 16"),
        (["--num-images", "0"], "--num-images must be a positive integer, got 0"),
        (["--min-contrast", "0.7"], "--min-contrast must be in [0, 0.5)"),
    ],
)
def test_refuses_bad_settings_before_writing(tmp_path, capsys, flags, message):
    output = tmp_path / "data"
    with pytest.raises(SystemExit) as raised:
        make_heldout_data.main(["--output", str(output), *flags])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_command_line_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("not ours")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(tmp_path)], capture_output=True, text=True, env=subprocess_env()
    )
    assert result.returncode == 2
    assert f"--output {tmp_path} already exists and is not an empty folder; pass a new folder" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]
