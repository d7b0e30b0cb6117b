"""Reliability round four: defects of issue 21's third probe whose fixes are checked here (each failed on main before).

Tests drive the `side` command in process through `test_reliability.run`, which also asserts that every failure is
one line without a traceback.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from test_reliability import run


def _save_pngs(folder: Path, size: int, count: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    for i in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype("uint8")).save(folder / f"{prefix}{i}.png")

def test_evaluate_names_the_set_whose_images_have_mixed_sizes(tmp_path, capsys):
    # main: "Images have mixed sizes [(8, 8), (12, 12)]" without saying which of the two sets
    generated, reference = tmp_path / "generated", tmp_path / "reference"
    _save_pngs(generated, 8, 3, "a")
    _save_pngs(generated, 12, 2, "b")
    _save_pngs(reference, 8, 4, "r")
    code, _, err = run(["evaluate", "--generated", generated, "--reference", reference, "--output", tmp_path / "out"], capsys)
    assert code == 2 and f"Images of '{generated}' have mixed sizes" in err and "--resolution" in err, err
