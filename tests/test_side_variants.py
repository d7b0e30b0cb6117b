"""SIDE variants beyond the paper: exemplar guidance (side-exemplar), target selection, guidance windows,
guidance on the predicted clean image (guidance_space="x0")."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import DDIMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.cli import main as side
from diffusers_side.generation.engine import GenerationSettings, generate, image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.generation.settings import check_output_dir
from diffusers_side.guidance.exemplar import ExemplarPosterior
from diffusers_side.guidance.targets import duplicate_fraction, target_probabilities
from diffusers_side.labels.surrogate_labels import fit_surrogate_labels
from diffusers_side.storage.data import load_image_dataset, tensor_to_pil


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    """A `side label`-like folder: 12 synthetic 16x16 images in 3 labels (4 near-identical images in label 0)."""
    torch.manual_seed(0)
    images = torch.rand(12, 1, 16, 16) * 2 - 1
    images[1:4] = images[0] + 0.01 * torch.randn(3, 1, 16, 16)
    features = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = fit_surrogate_labels(features, num_clusters=3, cohesion=0.0, extractor="test")
    assigned = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    path = tmp_path_factory.mktemp("labels")
    features_schema = Features({"image": Image(), "label": Value("int64"), "distance": Value("float32"), "seed": Value("int64")})
    Dataset.from_dict(
        {"image": tensor_to_pil((images.clamp(-1, 1) + 1) / 2), "label": assigned.tolist(), "distance": [0.0] * 12,
         "seed": list(range(12))},
        features=features_schema,
    ).save_to_disk(str(path))
    labels.save(path)
    return path


def exemplar_settings(labels_dir, **overrides):
    values = dict(pipeline="tiny", method="side-exemplar", num_images=6, batch_size=4, seed=3, num_inference_steps=3,
                  guidance_scale=1.0, exemplars=str(labels_dir))
    return GenerationSettings(**{**values, **overrides})


def test_side_exemplar_generates_toward_each_image_target(tmp_path, labelled_set):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50))
    dataset = generate(pipe, tmp_path / "run", exemplar_settings(labelled_set))
    seeds = [image_seed(3, i, EXTRACTION) for i in range(6)]
    assert dataset["target"] == [image_target(seed, 3) for seed in seeds]
    assert set(dataset["method"]) == {"side-exemplar"}
    # the same images as the pipeline call with the exemplar posterior, image by image
    exemplars = ExemplarPosterior.from_labelled_set(labelled_set, num_classes=3)
    expected = pipe(batch_size=1, target=dataset["target"][5], guidance_scale=1.0, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(seeds[5])], exemplars=exemplars, output_type="np").images
    assert np.array_equal(np.asarray(dataset["image"][5]), (expected[0, :, :, 0] * 255).round().astype(np.uint8))


def test_target_selection_draws_only_from_the_selected_clusters(tmp_path, labelled_set):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50))
    dataset = generate(pipe, tmp_path / "dup", exemplar_settings(labelled_set, target_selection="duplicates"))
    assert set(dataset["target"]) == {0}  # only label 0 holds near-duplicates
    recorded = json.loads((tmp_path / "dup" / "generation.json").read_text())
    assert recorded["target_selection"] == "duplicates" and recorded["exemplars"] == str(labelled_set.resolve())
    # novel: the clusters the synthetic set shows no near-duplicate group in (labels 1 and 2), never label 0
    novel = generate(pipe, tmp_path / "novel", exemplar_settings(labelled_set, target_selection="novel", num_images=12))
    assert set(novel["target"]) == {1, 2}


def test_duplicate_fraction_and_probabilities(labelled_set):
    posterior = ExemplarPosterior.from_labelled_set(labelled_set)
    images = posterior.images.view(-1, *posterior.image_shape).float()
    assert duplicate_fraction(images, posterior.labels, 3).tolist() == [1.0, 0.0, 0.0]
    assert target_probabilities("uniform", [0.5, 0.9], 0.4) is None
    np.testing.assert_allclose(target_probabilities("weighted", [0.5, 0.9], 0.4), [1 / 6, 5 / 6], atol=1e-5)
    assert target_probabilities("top0.5", [0.5, 0.9, 0.7, 0.95], 0.4).tolist() == [0.0, 0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="no synthetic image has a near-duplicate"):
        target_probabilities("duplicates", [0.5, 0.9], 0.4, np.zeros(2))
    assert target_probabilities("novel", [0.5, 0.9, 0.7], 0.4, np.array([0.5, 0.0, 0.0])).tolist() == [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="'novel': every cluster holds a near-duplicate"):
        target_probabilities("novel", [0.5, 0.9], 0.4, np.array([0.5, 1.0]))


def test_uniform_targets_are_the_papers_draw():
    """Without probabilities the draw is the one `side extract` has always made (old runs regenerate)."""
    assert [image_target(seed, 7) for seed in range(20)] == [int(np.random.default_rng(s).integers(7)) for s in range(20)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"exemplars": None}, "method='side-exemplar' needs exemplars=DIR"),
        ({"method": "side"}, "only applies to method='side-exemplar'"),
        ({"method": "uncond", "guidance_scale": 0.0, "exemplars": None, "target_selection": "top0.2"}, "samples without guidance"),
        ({"target_selection": "top3"}, "target selection 'top3' is not one of"),
        ({"guidance_window": [500, 100]}, r"guidance_window=\[500.0, 100.0\] must be"),
        ({"method": "side-lora", "exemplars": None, "guidance_window": [0, 500]},
         r"only applies to method='side', 'cond' or 'side-exemplar', not 'side-lora' \(it samples a LoRA model\)"),
        ({"method": "side", "exemplars": None, "guidance_space": "x_0"}, r"guidance_space='x_0' is not one of \('xt', 'x0'\)"),
        ({"guidance_space": "x0"}, r"not 'side-exemplar' \(the exemplar posterior is already exact.*drop --guidance-space x0"),
        ({"method": "side-lora", "exemplars": None, "guidance_space": "x0"}, r"not 'side-lora' \(it samples a LoRA model\)"),
        ({"method": "uncond", "guidance_scale": 0.0, "exemplars": None, "guidance_space": "x0"}, "it samples without guidance"),
    ],
)
def test_bad_variant_settings_are_refused(labelled_set, overrides, message):
    with pytest.raises(ValueError, match=message):
        exemplar_settings(labelled_set, **overrides).validate()


def test_duplicates_without_exemplars_is_refused():
    settings = GenerationSettings(pipeline="tiny", method="side", num_images=2, guidance_scale=1.0, target_selection="duplicates")
    with pytest.raises(ValueError, match="use --method side-exemplar"):
        settings.validate()


def test_old_generation_json_reads_with_the_papers_defaults():
    old = {"pipeline": "default", "method": "side", "num_images": 4, "guidance_scale": 1.0, "extra": {}}
    settings = GenerationSettings.from_dict(old)
    assert (settings.exemplars, settings.target_selection, settings.guidance_window) == (None, "uniform", None)
    assert settings.guidance_space == "xt"


def tiny_classifier_pipeline(time_dependent=True) -> SIDEPipeline:
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=4, time_dependent=time_dependent)
    return SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50), classifier.eval())


@pytest.mark.parametrize("method, time_dependent", [("side", True), ("cond", False)])
def test_x0_guidance_is_recorded_and_regenerates_image_by_image(tmp_path, method, time_dependent):
    pipe = tiny_classifier_pipeline(time_dependent)
    settings = GenerationSettings(pipeline="tiny", method=method, num_images=3, batch_size=2, seed=5, num_inference_steps=3,
                                  guidance_scale=0.3, guidance_space="x0")
    dataset = generate(pipe, tmp_path / "run", settings)
    recorded = json.loads((tmp_path / "run" / "generation.json").read_text())
    assert recorded["guidance_space"] == "x0"
    assert GenerationSettings.from_dict(recorded).guidance_space == "x0"
    seed = image_seed(5, 2, EXTRACTION)
    expected = pipe(batch_size=1, target=dataset["target"][2], guidance_scale=0.3, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(seed)], guidance_space="x0", output_type="np").images
    assert np.array_equal(np.asarray(dataset["image"][2]), (expected[0, :, :, 0] * 255).round().astype(np.uint8))
    paper = pipe(batch_size=1, target=dataset["target"][2], guidance_scale=0.3, num_inference_steps=3,
                 generator=[torch.Generator().manual_seed(seed)], output_type="np").images
    assert not np.array_equal(expected, paper)
    with pytest.raises(FileExistsError, match=r"settings differ in \['guidance_space'\]"):
        check_output_dir(tmp_path / "run", GenerationSettings.from_dict({**recorded, "guidance_space": "xt"}))


def test_cli_extract_side_exemplar_with_window(tmp_path, labelled_set, capsys):
    pipeline = tmp_path / "pipeline"
    SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50)).save_pretrained(pipeline)
    common = ["extract", "--pipeline", str(pipeline), "--num-images", "3", "--num-inference-steps", "2"]
    assert side([*common, "--method", "side-exemplar", "--exemplars", str(labelled_set), "--guidance-window", "20:49",
                 "--target-selection", "top0.5", "--output", str(tmp_path / "ex")]) == 0
    assert load_image_dataset(tmp_path / "ex")["method"] == ["side-exemplar"] * 3
    assert side([*common, "--method", "side-exemplar", "--output", str(tmp_path / "no")]) == 2
    assert "needs exemplars=DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        side([*common, "--method", "side-exemplar", "--guidance-window", "9:1", "--output", str(tmp_path / "w")])
    assert "expected T_MIN:T_MAX" in capsys.readouterr().err


def test_cli_extract_with_guidance_space(tmp_path, capsys):
    pipeline = tmp_path / "pipeline"
    tiny_classifier_pipeline().save_pretrained(pipeline)
    common = ["extract", "--pipeline", str(pipeline), "--num-images", "2", "--num-inference-steps", "2", "--method", "side"]
    assert side([*common, "--guidance-space", "x0", "--guidance-scale", "0.1", "--output", str(tmp_path / "x0")]) == 0
    assert side([*common, "--output", str(tmp_path / "xt")]) == 0
    assert json.loads((tmp_path / "x0" / "generation.json").read_text())["guidance_space"] == "x0"
    assert json.loads((tmp_path / "xt" / "generation.json").read_text())["guidance_space"] == "xt"
    with pytest.raises(SystemExit):
        side([*common, "--guidance-space", "x_0", "--output", str(tmp_path / "bad")])
    assert "argument --guidance-space: invalid choice: 'x_0'" in capsys.readouterr().err


def test_sweep_recorded_before_guidance_space_existed_resumes_as_xt(tmp_path):
    from dataclasses import asdict

    from diffusers_side.workflows.runs import SWEEP_CONFIG, check_sweep_folder

    config = {"guidance_scales": [0.0, 1.0], **asdict(GenerationSettings(pipeline="default", method="side", num_images=2))}
    old = {k: v for k, v in config.items() if k != "guidance_space"}
    (tmp_path / SWEEP_CONFIG).write_text(json.dumps(old))
    check_sweep_folder(tmp_path, config)
    with pytest.raises(FileExistsError, match="holds a sweep with other settings \\(guidance_space\\)"):
        check_sweep_folder(tmp_path, {**config, "guidance_space": "x0"})


def test_cli_sweep_side_exemplar_takes_its_exemplars(tmp_path, labelled_set, capsys):
    """`side sweep --method side-exemplar` was offered without `--exemplars` and always refused (issue 19, 21/14)."""
    from conftest import write_generation_dir

    pipeline = tmp_path / "pipeline"
    SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50)).save_pretrained(pipeline)
    reference = write_generation_dir(tmp_path / "reference", [np.full((16, 16), v, np.uint8) for v in (0, 80, 160, 240)])
    argv = ["sweep", "--pipeline", str(pipeline), "--method", "side-exemplar", "--guidance-scales", "0,10", "--num-images", "3",
            "--batch-size", "4", "--num-inference-steps", "2", "--reference", str(reference), "--similarity", "l2",
            "--output", str(tmp_path / "sweep")]
    assert side([*argv, "--exemplars", str(labelled_set), "--target-selection", "duplicates"]) == 0
    results = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    recorded = [results[scale]["generated"][0]["settings"] for scale in ("0", "10")]
    assert {(s["method"], s["exemplars"], s["target_selection"]) for s in recorded} == {
        ("side-exemplar", str(labelled_set.resolve()), "duplicates")}
    guided = load_image_dataset(tmp_path / "sweep" / "scale-10")
    assert set(guided["target"]) == {0}  # duplicates: only label 0 holds near-duplicates
    assert not np.array_equal(np.asarray(guided["image"][0]), np.asarray(load_image_dataset(tmp_path / "sweep" / "scale-0")["image"][0]))
    assert side([*argv[:-1], str(tmp_path / "refused")]) == 2
    assert "method='side-exemplar' needs exemplars=DIR" in capsys.readouterr().err
