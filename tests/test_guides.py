"""Guides as strategies: the keyword arguments build the same guides, a new guide is one class + one registration,
windows that never fire and malformed step counts are refused before sampling, and the guidance ablation runs."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.cli import main as side
from diffusers_side.generation.engine import GenerationSettings, generate, image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.guidance import registry
from diffusers_side.guidance.base import ScoreGuide
from diffusers_side.guidance.classifier import ClassifierGuide
from diffusers_side.guidance.clean_image import CleanImageGuide
from diffusers_side.guidance.exemplar import ExemplarGuide, ExemplarPosterior
from diffusers_side.guidance.schedule import GuidanceWindow
from diffusers_side.guidance.targets import TargetSampler

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def tiny_pipeline(scheduler=None) -> SIDEPipeline:
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=4).eval()
    return SIDEPipeline(make_tiny_unet(), scheduler or DDIMScheduler(num_train_timesteps=100), classifier)


def run(pipe, **kwargs):
    generator = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    return pipe(batch_size=2, num_inference_steps=4, generator=generator, output_type="pt", **kwargs)


@pytest.fixture(scope="module")
def exemplars():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2] * 4)
    return ExemplarPosterior((labels.float() * 0.6 - 0.6)[:, None, None, None] + 0.1 * torch.randn(12, 1, 16, 16), labels, 3)


def test_keyword_arguments_build_the_guides_they_describe(exemplars):
    pipe = tiny_pipeline()
    window = (0, 60)
    cases = [
        ({"guidance_window": window}, ClassifierGuide(pipe.classifier, window)),
        ({"guidance_space": "x0"}, CleanImageGuide(pipe.classifier)),
        ({"exemplars": exemplars, "guidance_window": window}, ExemplarGuide(exemplars, GuidanceWindow(*window))),
    ]
    plain = run(pipe, guidance_scale=0).images
    for keywords, guide in cases:
        by_keywords = run(pipe, target=[0, 2], guidance_scale=0.5, **keywords)
        by_guide = run(pipe, target=[0, 2], guidance_scale=0.5, guide=guide)
        assert torch.equal(by_keywords.images, by_guide.images) and not torch.equal(by_guide.images, plain), keywords
    assert type(pipe.resolve_guide(guidance_space="x0")) is CleanImageGuide
    with pytest.raises(ValueError, match="guide= replaces exemplars=, guidance_window= and guidance_space="):
        run(pipe, guide=ClassifierGuide(pipe.classifier), guidance_window=window)
    with pytest.raises(TypeError, match="guide must be a diffusers_side.guidance.base.Guide, got str"):
        run(pipe, guide="x0")


class DarkerGuide(ScoreGuide):
    """A test guide: grad log p(c | x_t) = -(c + 1) everywhere (each condition wants darker images)."""

    num_conditions = 3

    def log_prob_gradient(self, pipe, x_t, timestep, alpha_bar, targets):
        return -(targets.float() + 1).view(-1, 1, 1, 1).expand_as(x_t).to(x_t.dtype)


class DarkerClassifierGuide(ClassifierGuide):
    """A registered classifier guide: the paper's guide plus DarkerGuide's pull (tests the registration path)."""

    def log_prob_gradient(self, pipe, x_t, timestep, alpha_bar, targets):
        return super().log_prob_gradient(pipe, x_t, timestep, alpha_bar, targets) - 1.0


def test_a_new_guide_is_one_class_and_one_registration(tmp_path, monkeypatch):
    pipe = tiny_pipeline()
    plain, darker = run(pipe, guidance_scale=0).images, run(pipe, guide=DarkerGuide(), target=[0, 2], guidance_scale=2.0)
    assert darker.targets.tolist() == [0, 2] and (darker.images.mean() < plain.mean())

    monkeypatch.setattr(registry, "GUIDES", dict(registry.GUIDES))
    registry.register_guide("xt-darker", "test_guides:DarkerClassifierGuide", "classifier", "the paper's, darker")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_guide("xt", "test_guides:DarkerClassifierGuide", "classifier", "again")
    assert registry.guidance_spaces() == ("xt", "x0", "xt-darker")
    by_name = run(pipe, target=[0, 2], guidance_scale=1.0, guidance_space="xt-darker").images
    assert torch.equal(by_name, run(pipe, target=[0, 2], guidance_scale=1.0, guide=DarkerClassifierGuide(pipe.classifier)).images)
    # batch_size 1: a shard of one image is computed exactly as the single-image call below (a batch of two can differ
    # in the last bit of a pixel)
    settings = GenerationSettings(pipeline="tiny", method="side", num_images=2, batch_size=1, num_inference_steps=4,
                                  guidance_scale=1.0, guidance_space="xt-darker")
    dataset = generate(pipe, tmp_path / "run", settings)  # the method builds the registered guide
    seed = image_seed(0, 1, EXTRACTION)
    expected = pipe(batch_size=1, target=dataset["target"][1], guidance_scale=1.0, num_inference_steps=4, output_type="np",
                    generator=[torch.Generator().manual_seed(seed)], guidance_space="xt-darker").images
    assert np.array_equal(np.asarray(dataset["image"][1]), (expected[0, :, :, 0] * 255).round().astype(np.uint8))


def test_target_sampler_is_the_seeded_draw_of_side_extract():
    sampler = TargetSampler.from_selection("top0.5", 4, cohesion=[0.9, 0.95, 0.8, 0.99], cohesion_threshold=0.8)
    draws = [sampler.draw(seed) for seed in range(40)]
    assert set(draws) == {1, 3} and draws == [image_target(seed, 4, sampler.probabilities) for seed in range(40)]
    assert [TargetSampler(7).draw(seed) for seed in range(20)] == [image_target(seed, 7) for seed in range(20)]


# --- issue 21, defect 4: a guidance window that holds no sampling timestep ---------------------------------------


def test_a_window_without_sampling_timesteps_is_refused_before_any_unet_call():
    pipe = tiny_pipeline()
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"guidance_window=\(500, 1000\) holds none of the 4 sampling timesteps \(75 down to 0\)"):
        run(pipe, target=0, guidance_scale=1.0, guidance_window=(500, 1000))
    with pytest.raises(ValueError, match=r"guidance_window=\(80, 99\) holds none"):  # between two timesteps, also never fires
        run(pipe, target=0, guidance_scale=1.0, guide=ClassifierGuide(pipe.classifier, window=(80, 99)))
    assert calls == []
    assert run(pipe, target=0, guidance_scale=0, guidance_window=(500, 1000)).targets.tolist() == [0, 0]  # lambda 0: no guidance asked


def test_extract_refuses_a_window_that_never_fires_before_writing_anything(tmp_path, capsys):
    pipeline = tmp_path / "pipeline"
    tiny_pipeline(DDIMScheduler(num_train_timesteps=100)).save_pretrained(pipeline)
    argv = ["extract", "--pipeline", str(pipeline), "--method", "side", "--num-images", "2", "--num-inference-steps", "10",
            "--guidance-window", "500:1000", "--output", str(tmp_path / "out")]
    assert side(argv) == 2
    assert "guidance_window=(500, 1000) holds none of the 10 sampling timesteps (90 down to 0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert side([*argv[:-4], "--guidance-window", "50:1000", "--output", str(tmp_path / "out")]) == 0


# --- issue 21, defect 10: step counts and batch sizes that are not positive integers ----------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": -3}, r"num_inference_steps=-3 must be a positive integer"),
        ({"num_inference_steps": 0}, r"num_inference_steps=0 must be a positive integer"),
        ({"num_inference_steps": 2.5}, r"num_inference_steps=2.5 must be a positive integer"),
        ({"batch_size": True}, r"batch_size=True must be a positive integer \(an int >= 1, not a bool\)"),
        ({"num_inference_steps": True}, r"num_inference_steps=True must be a positive integer"),
    ],
)
def test_malformed_step_counts_and_batch_sizes_are_refused(kwargs, message):
    pipe = tiny_pipeline(DDPMScheduler(num_train_timesteps=100))
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": 2, **kwargs})
    assert calls == []


# --- benchmarks/ablate_guidance.py (README-documented; called `guide` with the wrong arity before) -----------------


@pytest.fixture
def ablation(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import ablate_guidance

    return ablate_guidance


def test_ablation_variants_sample_the_guides_they_name(ablation):
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def sample(text):
        return ablation.sample(pipe, ablation.parse_variant(text), num_images=3, seed=0, batch_size=2, eta=0.0, steps=4)

    plain, targets = sample("0")
    guided, _ = sample("2")
    windowed, _ = sample("2@0:40")
    control, again = sample("2@0:40+random"), sample("2@0:40+random")
    assert not torch.equal(guided, plain) and not torch.equal(windowed, guided)
    assert torch.equal(control[0], again[0]) and not torch.equal(control[0], windowed)
    generators = [torch.Generator().manual_seed(image_seed(0, i, EXTRACTION)) for i in range(2)]
    expected = pipe(batch_size=2, target=targets[:2], guidance_scale=2.0, num_inference_steps=4, generator=generators,
                    output_type="pt", guidance_window=(0, 40)).images
    assert torch.equal(windowed[:2], expected)


def test_ablation_script_runs_end_to_end(ablation, tmp_path, capsys):
    pipeline = tmp_path / "pipeline"
    tiny_pipeline().save_pretrained(pipeline)
    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16)).astype(np.uint8), mode="L").save(reference / f"{index}.png")
    ablation.main(["--pipeline", str(pipeline), "--reference", str(reference), "--variants", "0,1@0:40+random",
                   "--num-images", "2", "--num-inference-steps", "2", "--batch-size", "2", "--output", str(tmp_path / "a.json")])
    rows = [json.loads(line) for line in (tmp_path / "a.json").read_text().splitlines()]
    assert [row["variant"] for row in rows] == ["0", "1@0:40+random"] and all(row["num_images"] == 2 for row in rows)
    assert "| 1@0:40+random |" in capsys.readouterr().out
