"""`evaluate`, the report and `side evaluate` on tiny generation folders built by hand."""

import json

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, Features, Image, load_dataset

from conftest import make_tiny_unet, write_generation_dir
from diffusers_side.cli import main
from diffusers_side.evaluation import matching
from diffusers_side.evaluation.evaluate import evaluate
from diffusers_side.evaluation.report import format_table, plot_sweep
from diffusers_side.generation.engine import RECORD_FEATURES
from diffusers_side.storage.embedded import load_training_subset


def to_pil(array: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


def write_reference(path, arrays):
    Dataset.from_dict({"image": [to_pil(a) for a in arrays]}, features=Features({"image": Image()})).save_to_disk(str(path))
    return path


@pytest.fixture
def audit(tmp_path):
    """12 training images; a 'side' set with 3 exact copies (2 distinct), a near copy (RMS 8/255 = 0.031,
    mid band), a looser copy (RMS 13/255 = 0.051, low band) and 2 novel images; an 'uncond' set with one
    exact copy and 3 novel images."""
    rng = np.random.default_rng(0)
    training = [rng.integers(30, 220, (8, 8)).astype(np.uint8) for _ in range(12)]
    novel = [rng.integers(0, 256, (8, 8)).astype(np.uint8) for _ in range(5)]
    side = [training[0], training[0], training[1], training[2] + 8, training[3] + 13, novel[0], novel[1]]
    return {
        "reference": str(write_reference(tmp_path / "reference", training)),
        "side": str(write_generation_dir(tmp_path / "side", side, "side", 2.0)),
        "uncond": str(write_generation_dir(tmp_path / "uncond", [training[5], *novel[2:]], "uncond", 0.0)),
        "training": training,
        "tmp": tmp_path,
    }


def assert_png(path):
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_evaluate_end_to_end_writes_numbers_report_and_figures(audit):
    output = audit["tmp"] / "eval"
    report = evaluate([audit["side"], audit["uncond"]], audit["reference"], output, similarity="l2", chunk_size=5)

    side, uncond = report["methods"]["side"], report["methods"]["uncond"]
    assert side["counts"] == {"high": 3, "mid": 1, "low": 1} and side["unique_counts"] == {"high": 2, "mid": 1, "low": 1}
    assert side["ams"] == pytest.approx({"high": 3 / 7, "mid": 1 / 7, "low": 1 / 7})
    assert side["ums"] == pytest.approx({"high": 2 / 7, "mid": 1 / 7, "low": 1 / 7})
    assert side["memorization_ratio"] == pytest.approx(5 / 7)
    assert uncond["ams"] == pytest.approx({"high": 1 / 4, "mid": 0.0, "low": 0.0})
    assert side["guidance_scales"] == [2.0] and side["seeds"] == {"min": 100, "max": 106, "count": 7, "distinct": 7}

    on_disk = json.loads((output / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["bands"] == [{"name": "high", "low": 0.0, "high": 0.02}, {"name": "mid", "low": 0.02, "high": 0.04}, {"name": "low", "low": 0.04, "high": 0.06}]
    assert on_disk["bands_source"] == "default for l2" and "0.02" in on_disk["bands_rationale"]
    assert on_disk["versions"]["datasets"] and on_disk["settings"]["chunk_size"] == 5
    assert on_disk["generated"][0]["settings"]["seed"] == 100

    markdown = (output / "report.md").read_text()
    assert format_table(report) in markdown
    assert "| side | 7 | 14.29 | 14.29 | 42.86 | 14.29 | 14.29 | 28.57 |" in markdown
    assert "| low | [0.04, 0.06] |" in markdown and "| high | [0, 0.02) |" in markdown

    matches = load_dataset("parquet", data_files=str(output / "matches.parquet"), split="train")
    assert len(matches) == 11
    assert matches["best_match"][:5] == [0, 0, 1, 2, 3]
    assert matches["band"][:7] == ["high", "high", "high", "mid", "low", "", ""]
    assert matches["score"][3] == pytest.approx(8 / 255)
    assert all(second >= nearest for nearest, second in zip(matches["nearest_distance"], matches["second_distance"]))

    for figure in report["files"]["figures"].values():
        assert_png(output / figure)


def test_evaluate_carlini_with_user_bands_and_a_capped_normalizer(audit):
    report = evaluate([audit["side"]], audit["reference"], audit["tmp"] / "eval", bands="high:0:0.1,low:0.1:0.6667")
    similarity = report["similarity"]
    assert similarity["kind"] == "carlini" and similarity["num_neighbors"] == 12 and similarity["alpha"] == 0.5
    assert report["bands_source"] == "user"
    assert report["methods"]["side"]["counts"]["high"] == 3  # the exact copies: normalized L2 of 0


def test_evaluate_with_a_feature_extractor_uses_cosine(audit):
    report = evaluate([audit["side"]], audit["reference"], audit["tmp"] / "eval", feature_extractor="pixels")
    assert report["similarity"]["kind"] == "cosine" and report["similarity"]["direction"] == "larger is more similar"
    assert report["bands"][-1] == {"name": "high", "low": 0.6, "high": 1.0}
    assert report["methods"]["side"]["counts"]["high"] >= 3


def test_unet_extractor_loads_the_pipeline_named_in_generation_json(audit):
    from diffusers import DDPMScheduler

    from diffusers_side.pipelines.pipeline_side import SIDEPipeline

    with pytest.raises(ValueError, match="pass --pipeline"):
        evaluate([audit["side"]], audit["reference"], audit["tmp"] / "eval", feature_extractor="unet")
    pipeline_dir = audit["tmp"] / "pipeline"
    SIDEPipeline(make_tiny_unet(in_channels=1, sample_size=8), DDPMScheduler(num_train_timesteps=100)).save_pretrained(pipeline_dir)
    settings_file = audit["tmp"] / "side" / "generation.json"
    settings_file.write_text(json.dumps(dict(json.loads(settings_file.read_text()), pipeline=str(pipeline_dir))))
    report = evaluate([audit["side"]], audit["reference"], audit["tmp"] / "eval", feature_extractor="unet")
    assert report["settings"]["pipeline"] == str(pipeline_dir) and report["similarity"]["kind"] == "cosine"
    side = report["methods"]["side"]
    assert side["counts"]["high"] >= 3  # the exact copies embed identically: cosine 1


def test_one_method_at_two_guidance_scales_is_split(audit):
    training = audit["training"]
    other = write_generation_dir(audit["tmp"] / "side5", [training[4], training[6]], "side", 5.0)
    report = evaluate([audit["side"], str(other)], audit["reference"], audit["tmp"] / "eval", similarity="l2")
    assert list(report["methods"]) == ["side (guidance 2)", "side (guidance 5)"]
    assert report["methods"]["side (guidance 5)"]["ams"]["high"] == 1.0


def test_default_reference_and_upscaled_figures(tmp_path):
    digits = [np.asarray(image) for image in load_training_subset()["image"][:3]]
    generated = write_generation_dir(tmp_path / "uncond", digits, "uncond")
    report = evaluate([str(generated)], "default", tmp_path / "eval", similarity="l2")
    assert report["reference"]["num_images"] == len(load_training_subset()) and report["methods"]["uncond"]["ams"]["high"] == 1.0
    width, height = assert_png(tmp_path / "eval" / report["files"]["figures"]["uncond"])
    assert height >= 64 and width >= 4 * (2 * 64)  # 16x16 digits drawn at 64x64, 4 pairs a row


def test_size_and_channel_mismatch_name_the_sizes_and_the_flag(audit):
    big = write_generation_dir(audit["tmp"] / "big", [np.zeros((16, 16), np.uint8)], "uncond")
    with pytest.raises(ValueError, match=r"16x16 with 1 channel\(s\).*8x8 with 1 channel\(s\).*--resolution 8"):
        evaluate([str(big)], audit["reference"], audit["tmp"] / "eval")
    rgb = write_generation_dir(audit["tmp"] / "rgb", [np.zeros((8, 8, 3), np.uint8)], "uncond")
    with pytest.raises(ValueError, match="3 channel.*--channels 1"):
        evaluate([str(rgb)], audit["reference"], audit["tmp"] / "eval")
    report = evaluate([str(big)], audit["reference"], audit["tmp"] / "eval", resolution=8)
    assert report["generated"][0]["image_shape"] == [1, 8, 8]


def test_empty_sets_raise(audit, monkeypatch):
    # `datasets` itself cannot write-and-reload an empty image set, so the empty set is served in memory.
    real_loader = matching.load_image_dataset
    empty = Dataset.from_dict({k: [] for k in RECORD_FEATURES}, features=RECORD_FEATURES)
    monkeypatch.setattr(matching, "load_image_dataset", lambda source: empty if source == "empty" else real_loader(source))
    with pytest.raises(ValueError, match="generated set 'empty' is empty"):
        evaluate([audit["side"], "empty"], audit["reference"], audit["tmp"] / "eval")
    with pytest.raises(ValueError, match="reference set 'empty' is empty"):
        evaluate([audit["side"]], "empty", audit["tmp"] / "eval")
    with pytest.raises(ValueError, match="No generated sets"):
        evaluate([], audit["reference"], audit["tmp"] / "eval")


def test_bad_arguments_raise_before_any_data_is_read(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="overlap"):
        evaluate([missing], missing, tmp_path, bands="low:0.4:0.55,mid:0.5:0.6")
    with pytest.raises(ValueError, match="unsorted"):
        evaluate([missing], missing, tmp_path, bands=[("mid", 0.5, 0.6), ("low", 0.4, 0.5)])
    with pytest.raises(ValueError, match="chunk_size=0"):
        evaluate([missing], missing, tmp_path, chunk_size=0)
    with pytest.raises(ValueError, match="channels=2"):
        evaluate([missing], missing, tmp_path, channels=2)
    with pytest.raises(ValueError, match="ums='all' is not one of"):
        evaluate([missing], missing, tmp_path, ums="all")


def test_every_report_names_the_ums_counting_and_why_best_is_the_default(audit, capsys):
    default = evaluate([audit["side"]], audit["reference"], audit["tmp"] / "best", similarity="l2")
    assert default["ums"]["counting"] == default["ums"]["default"] == "best" and default["settings"]["ums"] == "best"
    assert "near-duplicates" in default["ums"]["why_default"]
    markdown = (audit["tmp"] / "best" / "report.md").read_text()
    assert "Counting: `best` (the default)." in markdown and default["ums"]["why_default"] in markdown
    assert "UMS high (best, %)" in format_table(default)

    output = audit["tmp"] / "pairs"
    argv = ["evaluate", "--generated", audit["side"], "--reference", audit["reference"], "--output", str(output),
            "--similarity", "l2", "--ums", "pairs"]
    assert main(argv) == 0
    assert "UMS high (pairs, %)" in capsys.readouterr().out
    pairs = json.loads((output / "report.json").read_text())
    assert pairs["ums"]["counting"] == "pairs" and "Eqs. 8-9" in pairs["ums"]["definition"]
    assert "Counting: `pairs` (not the default, `best`)." in (output / "report.md").read_text()
    best_counts, pair_counts = default["methods"]["side"]["unique_counts"], pairs["methods"]["side"]["unique_counts"]
    assert all(pair_counts[band] >= best_counts[band] for band in best_counts)
    with pytest.raises(SystemExit) as refused:
        main(argv[:-1] + ["all"])
    assert refused.value.code == 2 and "invalid choice: 'all'" in capsys.readouterr().err


def test_cli_prints_the_table_and_reports_bad_input(audit, capsys):
    output = audit["tmp"] / "cli"
    code = main(["evaluate", "--generated", audit["side"], audit["uncond"], "--reference", audit["reference"], "--output", str(output), "--similarity", "l2", "--chunk-size", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| side | 7 |" in printed and "| uncond | 4 |" in printed and "evaluate done" in printed
    assert (output / "report.md").is_file()
    code = main(["evaluate", "--generated", audit["side"], "--reference", audit["reference"], "--output", str(output), "--bands", "a:0.5:0.6,b:0.4:0.5"])
    assert code == 2 and "unsorted" in capsys.readouterr().err


def test_plot_sweep_writes_a_png_and_checks_the_bands(audit):
    reports = {}
    for scale, name in ((0.0, "uncond"), (2.0, "side")):
        report = evaluate([audit[name]], audit["reference"], audit["tmp"] / f"eval{scale}", similarity="l2")
        report["methods"] = {"side": next(iter(report["methods"].values()))}
        reports[scale] = report
    path = plot_sweep(reports, audit["tmp"] / "sweep" / "sweep.png")
    assert assert_png(path)[0] > 500
    reports[2.0] = dict(reports[2.0], bands=[{"name": "all", "low": 0.0, "high": 1.0}])
    with pytest.raises(ValueError, match="different bands"):
        plot_sweep(reports, audit["tmp"] / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plot_sweep({}, audit["tmp"] / "bad.png")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"similarity": "carlni"}, r"similarity='carlni' is not one of \('l2', 'carlini', 'cosine'\)"),
        ({"similarity": "pixels"}, r"similarity='pixels' is not one of .*feature_extractor="),
        ({"similarity": "l2", "feature_extractor": "pixels"}, "similarity='l2' compares pixels"),
        ({"similarity": "cosine"}, "pass feature_extractor="),
    ],
)
def test_bad_similarity_is_refused_before_any_work(audit, arguments, message):
    with pytest.raises(ValueError, match=message):
        evaluate([audit["side"]], audit["reference"], audit["tmp"] / "bad-eval", **arguments)
    assert not (audit["tmp"] / "bad-eval").exists()
