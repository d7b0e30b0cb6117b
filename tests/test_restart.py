"""Restart sampling (`--restart-strength`): the re-noised second pass, its settings, and how a study charges it."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline
from diffusers_side.generation.engine import generate
from diffusers_side.generation.settings import GenerationSettings, check_output_dir
from diffusers_side.guidance.exemplar import ExemplarPosterior
from diffusers_side.pipelines.core import restart_steps
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.workflows.study import STUDY_CONFIG, Study, run_study
from diffusers_side.workflows.study_config import StudyConfig

TRAIN_STEPS = 50


def pipeline(scheduler=None) -> SIDEPipeline:
    pipe = SIDEPipeline(make_tiny_unet(), scheduler or DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(seeds=(0, 1, 2)) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_strength_zero_is_the_unrestarted_call_and_ddpm_pipeline():
    pipe = pipeline()
    plain = pipe(batch_size=3, generator=generators(), num_inference_steps=10, output_type="np").images
    zero = pipe(batch_size=3, generator=generators(), num_inference_steps=10, output_type="np", restart_strength=0.0).images
    ddpm = DDPMPipeline(pipe.unet, pipe.scheduler)
    ddpm.set_progress_bar_config(disable=True)
    reference = ddpm(batch_size=3, generator=generators(), num_inference_steps=10, output_type="np").images
    assert np.array_equal(plain, zero) and np.array_equal(plain, reference)


@pytest.mark.parametrize("scheduler", [DDPMScheduler(num_train_timesteps=TRAIN_STEPS), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)])
def test_a_restart_re_noises_the_finished_sample_and_re_runs_the_last_steps(scheduler):
    """The same as img2img by hand: the first pass, noise drawn next from each image's generator, `add_noise` at the
    first re-run timestep, then the scheduler's last steps."""
    pipe, steps, strength = pipeline(scheduler), 10, 0.3
    restarted = pipe(batch_size=2, generator=generators((3, 4)), num_inference_steps=steps, output_type="pt", restart_strength=strength).images

    state = generators((3, 4))
    first = pipe(batch_size=2, generator=state, num_inference_steps=steps, output_type="pt").images * 2 - 1
    kwargs = pipe.prepare_step_kwargs(state, 0.0)
    pipe.scheduler.set_timesteps(steps)
    start = steps - restart_steps(steps, strength)
    noise = torch.cat([torch.randn((1, *first.shape[1:]), generator=g) for g in state])
    sample = pipe.scheduler.add_noise(first, noise, pipe.scheduler.timesteps[start].repeat(2))
    for t in pipe.scheduler.timesteps[start:]:
        sample = pipe.scheduler.step(pipe.unet(sample, t).sample, t, sample, **kwargs).prev_sample
    expected = (sample / 2 + 0.5).clamp(0, 1)
    assert restart_steps(steps, strength) == 3
    assert torch.allclose(restarted, expected, atol=1e-5)
    assert (restarted - (first / 2 + 0.5)).abs().max() > 0.01  # it did change the images


def test_a_restarted_image_regenerates_alone_and_a_multistep_solver_restarts_from_a_clean_state():
    for scheduler in (DDPMScheduler(num_train_timesteps=TRAIN_STEPS), DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_STEPS)):
        pipe = pipeline(scheduler)
        batch = pipe(batch_size=3, generator=generators(), num_inference_steps=8, output_type="np", restart_strength=0.5).images
        alone = pipe(batch_size=1, generator=generators((1,)), num_inference_steps=8, output_type="np", restart_strength=0.5).images
        again = pipe(batch_size=3, generator=generators(), num_inference_steps=8, output_type="np", restart_strength=0.5).images
        assert np.isfinite(batch).all() and np.array_equal(batch, again)
        assert np.abs(alone[0] - batch[1]).max() < 1e-5


def test_the_guide_steers_the_restart_too():
    pipe = pipeline(DDPMScheduler(num_train_timesteps=1000))  # the restart starts at t = 833, where guidance still acts
    exemplars = ExemplarPosterior(torch.rand(6, 1, 16, 16) * 2 - 1, torch.tensor([0, 1] * 3), num_classes=2)
    call = dict(batch_size=2, num_inference_steps=6, output_type="pt", exemplars=exemplars, target=[0, 1], guidance_scale=2.0)
    restarted = pipe(**call, generator=generators((5, 6)), restart_strength=1.0).images

    state = generators((5, 6))
    first = pipe(**call, generator=state).images * 2 - 1
    saved = [g.get_state() for g in state]

    def restart(guide, scale):
        for g, s in zip(state, saved):
            g.set_state(s)
        kwargs = pipe.prepare_step_kwargs(state, 0.0)
        return pipe.denoise(first, kwargs, guide, torch.tensor([0, 1]), scale, restart=(1.0, 6, state)) / 2 + 0.5

    guided, unguided = restart(pipe.resolve_guide(exemplars=exemplars), 2.0), restart(None, 0.0)
    assert torch.allclose(restarted, guided.clamp(0, 1), atol=1e-5)
    assert (guided - unguided).abs().max() > 1e-3


@pytest.mark.parametrize(
    "strength, message",
    [(1.5, r"restart_strength=1.5 must be a number in \[0, 1\]"), (float("nan"), "restart_strength=nan must be"),
     (True, "restart_strength=True must be"), (0.01, "re-runs no step of a 10-step chain; use at least 0.1")],
)
def test_a_bad_strength_is_refused_before_sampling(strength, message):
    with pytest.raises(ValueError, match=message):
        pipeline()(batch_size=1, num_inference_steps=10, restart_strength=strength)


def test_settings_record_the_strength_and_a_resume_with_another_is_refused(tmp_path):
    pipe = pipeline(DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    pipe.save_pretrained(tmp_path / "pipe")
    settings = GenerationSettings(str(tmp_path / "pipe"), "uncond", 2, batch_size=2, num_inference_steps=4, restart_strength=0.5)
    settings.validate()
    assert settings.steps_per_image == 6
    generate(pipe, tmp_path / "run", settings)
    record = json.loads((tmp_path / "run" / "generation.json").read_text())
    assert record["restart_strength"] == 0.5
    other = GenerationSettings(str(tmp_path / "pipe"), "uncond", 2, batch_size=2, num_inference_steps=4)
    with pytest.raises(FileExistsError, match=r"settings differ in \['restart_strength'\]"):
        check_output_dir(tmp_path / "run", other)
    # a record written before the option existed reads as no restart
    del record["restart_strength"]
    assert GenerationSettings.from_dict(record).restart_strength == 0.0


@pytest.mark.parametrize(
    "method, message",
    [("synthetic", "the synthetic set is the plain sample the surrogate labels are built from"), ("side-lora", "it samples a LoRA model")],
)
def test_methods_that_cannot_restart_refuse_it_naming_the_flag(method, message):
    settings = GenerationSettings("default", method, 2, restart_strength=0.5)
    with pytest.raises(ValueError, match=message) as error:
        settings.validate()
    assert "drop --restart-strength 0.5" in str(error.value)
    for accepting in ("uncond", "side", "cond"):
        GenerationSettings("default", accepting, 2, restart_strength=0.5, classifier="default").validate()


def study_payload(root, configurations) -> dict:
    return {
        "pipeline": str(root / "pipe"), "reference": str(root / "reference"), "inputs": {"num_synthetic": 24, "num_clusters": 3},
        "selection": {"seed": 1, "num_images": 6}, "report": {"seed": 2, "num_images": 6},
        "num_inference_steps": 2, "batch_size": 8, "bootstrap_resamples": 20, "configurations": configurations,
    }


def test_a_study_charges_plain_sampling_with_a_restart_and_extends_only_the_baseline(tmp_path):
    pipeline(DDIMScheduler(num_train_timesteps=TRAIN_STEPS)).save_pretrained(tmp_path / "pipe")
    (tmp_path / "reference").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "reference" / f"{i}.png")
    configurations = [{"name": "uncond", "method": "uncond"}, {"name": "uncond-r", "method": "uncond", "restart_strength": 0.5}]
    config = StudyConfig.from_dict(study_payload(tmp_path, configurations))
    results = run_study(config, tmp_path / "out", "report")
    restarted, baseline = results["configurations"]["uncond-r"], results["configurations"]["uncond"]
    cost = restarted["budget"]
    assert sorted(cost["stages"]) == ["extract report/uncond-r"]  # no synthesis: it needs no inputs
    assert cost["unet_evaluations"] == 6 * (2 + 1) and "with_synthetic" not in restarted
    assert restarted["num_generated"] == 6 and baseline["num_generated"] == max(6, cost["plain_images"])
    assert list(restarted["equal_budget"]) == ["uncond"] and "budget" not in baseline
    assert "--restart-strength 0.5" in restarted["command"] and "--restart-strength" not in baseline["command"]
    images = load_image_dataset(restarted["folder"])["image"]
    assert len(images) == 6 and not (tmp_path / "out" / "inputs" / "synthetic").exists()
    # a study recorded before configurations had the key resumes
    recorded = json.loads((tmp_path / "out" / STUDY_CONFIG).read_text())
    for item in recorded["configurations"]:
        if item["restart_strength"] == 0:
            item.pop("restart_strength")
    (tmp_path / "out" / STUDY_CONFIG).write_text(json.dumps(recorded))
    Study(config, tmp_path / "out", "report").check()


@pytest.mark.parametrize(
    "configurations, message",
    [([{"name": "u", "method": "uncond", "restart_strength": 0.5}], "No 'uncond' configuration without a restart"),
     ([{"name": "u", "method": "uncond"}, {"name": "r", "method": "uncond", "restart_strength": 2}],
      r"configuration 'r': restart_strength=2 must be a number in \[0, 1\]")],
)
def test_a_study_config_needs_a_plain_baseline_and_a_valid_strength(tmp_path, configurations, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_dict(study_payload(tmp_path, configurations)).validate()
