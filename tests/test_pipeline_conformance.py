"""diffusers' pipeline contract, restated for SIDEPipeline so that drift with a new diffusers release shows up here.

diffusers checks every pipeline with `PipelineTesterMixin` (tests/pipelines/test_pipelines_common.py) and
`DDIMPipeline` with `DDIMPipelineFastTests` (tests/pipelines/ddim/test_ddim.py). Those files are not part of
the diffusers wheel, so each check is written again here (the docstring names the diffusers test it
restates), against two set-ups: SIDEPipeline swapped in for DDIMPipeline (UNet + scheduler, built as
`DDIMPipelineFastTests.get_dummy_components` builds them) and the guided pipeline (the same plus a classifier).
Where the reference is a diffusers pipeline, the comparison runs against the installed diffusers, so a
changed default or a new argument there fails a test here.

Deliberate differences, each asserted below: pickled weights load only with `use_safetensors=False`; a
pipeline without classifier refuses a positive `guidance_scale` instead of ignoring it.
"""

import inspect
import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from diffusers_side import SIDEPipeline, TimeDependentClassifier

SETUPS = ("unguided", "guided")
# PipelineTesterMixin.required_optional_params without what DDIMPipelineFastTests removes
# (num_images_per_prompt, latents, callback, callback_steps): an unconditional pipeline has no prompt or latents.
REQUIRED_OPTIONAL_PARAMS = {"num_inference_steps", "generator", "output_type", "return_dict"}
REQUIRED_PARAMS = {"batch_size"}  # pipeline_params.UNCONDITIONAL_IMAGE_GENERATION_PARAMS


def dummy_components(setup: str) -> dict:
    """The components of `DDIMPipelineFastTests` (attention blocks included), plus a classifier when guided."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    components = {"unet": unet, "scheduler": DDIMScheduler()}
    if setup == "guided":
        components["classifier"] = TimeDependentClassifier(in_channels=3, sample_size=8, num_classes=3, base_channels=4)
    return components


def dummy_inputs(seed: int = 0) -> dict:
    """`DDIMPipelineFastTests.get_dummy_inputs` (the guided set-up guides at the default scale)."""
    return {"batch_size": 1, "generator": torch.Generator("cpu").manual_seed(seed), "num_inference_steps": 2,
            "output_type": "np"}


def make_pipeline(setup: str) -> SIDEPipeline:
    pipe = SIDEPipeline(**dummy_components(setup))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_np(images) -> np.ndarray:
    return images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)


def max_difference(a, b) -> float:
    return float(np.abs(to_np(a) - to_np(b)).max())


@pytest.fixture(params=SETUPS)
def setup(request) -> str:
    return request.param


def test_call_signature_has_the_required_parameters():
    """PipelineTesterMixin.test_pipeline_call_signature."""
    parameters = inspect.signature(SIDEPipeline.__call__).parameters
    optional = {name for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert REQUIRED_PARAMS <= set(parameters)
    assert REQUIRED_OPTIONAL_PARAMS <= optional


@pytest.mark.parametrize("reference", [DDPMPipeline, DDIMPipeline], ids=lambda c: c.__name__)
def test_call_accepts_every_argument_of_the_unguided_pipelines(reference):
    """A caller of DDPMPipeline / DDIMPipeline keeps working: every argument exists, with the same default.

    `num_inference_steps` is the one default that depends on the scheduler (checked by sampling below).
    """
    ours = inspect.signature(SIDEPipeline.__call__).parameters
    theirs = inspect.signature(reference.__call__).parameters
    assert set(theirs) - set(ours) == set()
    for name, parameter in theirs.items():
        if name not in ("self", "num_inference_steps"):
            assert ours[name].default == parameter.default, name
    assert list(ours)[:3] == list(theirs)[:3] == ["self", "batch_size", "generator"]


class StepsRecorded(Exception):
    """Raised by a spy on `scheduler.set_timesteps` to stop a call once its number of steps is known."""


def steps_used_by_default_call(pipe) -> int:
    """The `num_inference_steps` a call with no arguments hands to the scheduler (the loop never runs)."""

    def record(num_inference_steps, *args, **kwargs):
        raise StepsRecorded(num_inference_steps)

    pipe.scheduler.set_timesteps = record
    with pytest.raises(StepsRecorded) as stopped:
        pipe(generator=torch.Generator().manual_seed(0))
    return stopped.value.args[0]


@pytest.mark.parametrize("reference, scheduler", [(DDIMPipeline, DDIMScheduler), (DDPMPipeline, DDPMScheduler)],
                         ids=["DDIM", "DDPM"])
def test_default_number_of_steps_is_the_unguided_pipelines(reference, scheduler):
    """A call without `num_inference_steps` takes DDIMPipeline's 50 steps with a DDIM scheduler and
    DDPMPipeline's 1000 with the standard DDPM scheduler."""
    unet = dummy_components("unguided")["unet"]
    expected = steps_used_by_default_call(reference(unet, scheduler()))
    assert expected == (50 if reference is DDIMPipeline else 1000)
    assert steps_used_by_default_call(SIDEPipeline(unet, scheduler())) == expected


def test_default_call_is_bit_identical_to_ddim_pipeline():
    """DDIMPipelineFastTests.test_inference at DDIMPipeline's own default number of steps."""
    components = dummy_components("unguided")
    expected = DDIMPipeline(**components)(generator=torch.Generator().manual_seed(0), output_type="np").images
    images = SIDEPipeline(**components)(generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 3)
    assert np.array_equal(images, expected)


@pytest.mark.parametrize("eta, clipped", [(0.0, True), (0.5, False), (1.0, True)])
def test_use_clipped_model_output_and_eta_match_ddim_pipeline(eta, clipped):
    """DDIMPipeline's own arguments are accepted and forwarded exactly as DDIMPipeline forwards them."""
    components = dummy_components("unguided")
    components["scheduler"] = DDIMScheduler(clip_sample=True, clip_sample_range=0.5)
    inputs = {**dummy_inputs(), "num_inference_steps": 4, "eta": eta, "use_clipped_model_output": clipped}
    expected = DDIMPipeline(**components)(**inputs).images
    images = SIDEPipeline(**components)(**{**inputs, "generator": torch.Generator().manual_seed(0)}).images
    assert np.array_equal(images, expected)


def test_use_clipped_model_output_refused_by_schedulers_without_it():
    pipe = SIDEPipeline(dummy_components("unguided")["unet"], DDPMScheduler())
    with pytest.raises(ValueError, match=r"use_clipped_model_output=True is an option of DDIMScheduler.step.*DDPMScheduler"):
        pipe(num_inference_steps=2, use_clipped_model_output=True)


def test_dict_and_tuple_outputs_are_equivalent(setup):
    """PipelineTesterMixin.test_dict_tuple_outputs_equivalent; the tuple is `(images,)` as DDIMPipeline's."""
    pipe = make_pipeline(setup)
    as_dict = pipe(**dummy_inputs())
    as_tuple = pipe(**dummy_inputs(), return_dict=False)
    reference = DDIMPipeline(**dummy_components("unguided"))(**dummy_inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(reference) == 1
    assert np.array_equal(as_dict[0], as_tuple[0])
    assert (as_dict.targets is not None) == (setup == "guided")


def test_components_are_the_ones_given(setup):
    """PipelineTesterMixin.test_components_function: no `classifier: None` entry for an unguided pipeline."""
    components = dummy_components(setup)
    pipe = SIDEPipeline(**components)
    assert set(pipe.components) == set(components)
    assert all(pipe.components[name] is module for name, module in components.items())
    assert set(SIDEPipeline(**pipe.components).components) == set(components)


def test_unguided_components_build_the_diffusers_pipelines():
    """A user swapping back: `DDIMPipeline(**side.components)` works and samples the same images."""
    pipe = make_pipeline("unguided")
    ddim = DDIMPipeline(**pipe.components)
    assert np.array_equal(ddim(**dummy_inputs()).images, pipe(**dummy_inputs()).images)
    assert isinstance(DDPMPipeline(**pipe.components), DDPMPipeline)


def test_from_pipe_round_trip_keeps_config_and_output():
    """PipelineFromPipeTesterMixin.test_from_pipe_consistent_config / _forward_pass, with DDIMPipeline as original."""
    components = dummy_components("guided")
    ddim = DDIMPipeline(unet=components["unet"], scheduler=components["scheduler"])
    side = SIDEPipeline.from_pipe(ddim, classifier=components["classifier"])
    back = DDIMPipeline.from_pipe(side)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(ddim.config)
    assert side.classifier is components["classifier"] and back.unet is ddim.unet
    assert np.array_equal(back(**dummy_inputs()).images, ddim(**dummy_inputs()).images)
    assert np.array_equal(side(**dummy_inputs(), guidance_scale=0).images, ddim(**dummy_inputs()).images)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_save_load_local(setup, tmp_path):
    """PipelineTesterMixin.test_save_load_local: every required component is logged as loaded, same weights,
    same output (to float rounding: reloaded tensors may be laid out differently in memory)."""
    pipe = make_pipeline(setup)
    output = pipe(**dummy_inputs()).images
    pipe.save_pretrained(tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    loader_logger = diffusers_logging.get_logger("diffusers.pipelines.pipeline_utils")
    level = loader_logger.level
    loader_logger.setLevel(logging.INFO)
    loader_logger.addHandler(handler)
    try:
        loaded = SIDEPipeline.from_pretrained(tmp_path)
    finally:
        loader_logger.removeHandler(handler)
        loader_logger.setLevel(level)
    log = "\n".join(records)
    for name in loaded.components:
        if name not in loaded._optional_components:
            assert name in log
    assert set(loaded.components) == set(pipe.components)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert_same_weights(loaded.components[name], component)
    loaded.set_progress_bar_config(disable=True)
    assert max_difference(loaded(**dummy_inputs()).images, output) < 1e-5


def test_pickled_save_loads_only_with_opt_in(tmp_path):
    """The mixin saves with `safe_serialization=False` and loads plainly; SIDEPipeline asks for the opt-in."""
    pipe = make_pipeline("guided")
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError, match="use_safetensors=False"):
        SIDEPipeline.from_pretrained(tmp_path)
    loaded = SIDEPipeline.from_pretrained(tmp_path, use_safetensors=False)
    loaded.set_progress_bar_config(disable=True)
    assert max_difference(loaded(**dummy_inputs()).images, pipe(**dummy_inputs()).images) < 1e-5


def test_save_load_optional_components(tmp_path):
    """PipelineTesterMixin.test_save_load_optional_components: a classifier set to None stays None."""
    pipe = make_pipeline("guided")
    pipe.classifier = None
    output = pipe(**dummy_inputs()).images
    pipe.save_pretrained(tmp_path)
    loaded = SIDEPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.classifier is None and "classifier" not in loaded.components
    assert max_difference(loaded(**dummy_inputs()).images, output) < 1e-5


def test_inference_batch_single_identical(setup):
    """PipelineTesterMixin.test_inference_batch_single_identical (+ _consistent): image 0 of a batch of 3 with
    one generator per image equals the single-image call with generator 0."""
    pipe = make_pipeline(setup)
    single = pipe(**dummy_inputs())
    batch = pipe(**{**dummy_inputs(), "batch_size": 3, "generator": [torch.Generator().manual_seed(i) for i in range(3)]})
    assert len(batch[0]) == 3
    assert max_difference(batch[0][0], single[0][0]) < 1e-4
    if setup == "guided":
        assert batch.targets[0] == single.targets[0]


def test_to_dtype(setup):
    """PipelineTesterMixin.test_to_dtype: `pipe.to(dtype=...)` reaches every model component."""
    components = dummy_components(setup)
    pipe = SIDEPipeline(**components)
    models = [c for c in components.values() if isinstance(c, torch.nn.Module)]
    assert all(m.dtype == torch.float32 for m in models)
    pipe.to(dtype=torch.float16)
    assert all(m.dtype == torch.float16 for m in models)


def test_attention_slicing_forward_pass(setup):
    """PipelineTesterMixin.test_attention_slicing_forward_pass."""
    pipe = make_pipeline(setup)
    plain = pipe(**dummy_inputs())[0]
    for slice_size in (1, 2):
        pipe.enable_attention_slicing(slice_size=slice_size)
        assert max_difference(pipe(**dummy_inputs())[0], plain) < 1e-3


def test_guidance_scale_changes_output_not_shape():
    """PipelineTesterMixin.test_cfg, for the guided pipeline."""
    pipe = make_pipeline("guided")
    low = pipe(**dummy_inputs(), target=0, guidance_scale=1.0)[0]
    high = pipe(**dummy_inputs(), target=0, guidance_scale=7.5)[0]
    assert low.shape == high.shape
    assert max_difference(low, high) > 0


def test_guidance_scale_without_classifier_is_refused():
    """PipelineTesterMixin.test_cfg on the unguided set-up: refused (documented difference), never ignored."""
    pipe = make_pipeline("unguided")
    with pytest.raises(ValueError, match=r"guidance_scale=7.5, target=None need a classifier"):
        pipe(**dummy_inputs(), guidance_scale=7.5)
    assert pipe(**dummy_inputs(), guidance_scale=0.0)[0].shape == (1, 8, 8, 3)


def test_serialization_and_loading_with_variants(setup, tmp_path):
    """PipelineTesterMixin.test_serialization_with_variants / test_loading_with_variants /
    test_loading_with_incorrect_variants_raises_error (in safetensors)."""
    pipe = make_pipeline(setup)
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    models = [name for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)]
    for name in models:
        assert any(f.name.split(".")[1] == "fp16" for f in (tmp_path / "variant" / name).iterdir()), name
    loaded = SIDEPipeline.from_pretrained(tmp_path / "variant", variant="fp16")
    for name in models:
        original, reloaded = pipe.components[name].state_dict(), loaded.components[name].state_dict()
        assert all(torch.equal(original[k], reloaded[k]) for k in original), name
    pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
        SIDEPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


@pytest.mark.parametrize("dtype", [torch.float16, {"unet": torch.bfloat16, "default": torch.float16}], ids=["alias", "dict"])
def test_from_pretrained_dtype(setup, dtype, tmp_path):
    """PipelineTesterMixin.test_dtype_alias / test_dtype_dict."""
    make_pipeline(setup).save_pretrained(tmp_path)
    loaded = SIDEPipeline.from_pretrained(tmp_path, dtype=dtype)
    for name, component in loaded.components.items():
        if isinstance(component, torch.nn.Module):
            expected = dtype.get(name, dtype["default"]) if isinstance(dtype, dict) else dtype
            assert component.dtype == expected, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading needs an accelerator (as in diffusers)")
def test_model_cpu_offload_forward_pass(setup):
    """PipelineTesterMixin.test_model_cpu_offload_forward_pass: same output; the classifier stays on the device."""
    import accelerate

    pipe = make_pipeline(setup).to("cuda")
    plain = pipe(**dummy_inputs())[0]
    pipe.enable_model_cpu_offload(device="cuda")
    assert pipe._execution_device.type == "cuda"
    assert max_difference(pipe(**dummy_inputs())[0], plain) < 2e-4
    offloaded = {k: v for k, v in pipe.components.items()
                 if isinstance(v, torch.nn.Module) and k not in pipe._exclude_from_cpu_offload}
    assert all(v.device.type == "cpu" for v in offloaded.values())
    assert all(isinstance(v._hf_hook, accelerate.hooks.CpuOffload) for v in offloaded.values())
