"""SIDE's LoRA branch: zero-init conditioning, adapters, sampling with CFG, saving/loading, training and resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DConditionModel
from huggingface_hub import ModelCard
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from test_train_classifier import NUM_CLASSES, make_labelled_data, surrogate_labels

from conftest import launch_two_processes, make_tiny_unet
from diffusers_side import SIDELoRAPipeline
from diffusers_side.cli import main as side
from diffusers_side.generation.engine import image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.models.lora import (
    ADAPTER_WEIGHT_NAME,
    CLASS_EMBEDDING_NAME,
    LORA_CONFIG_NAME,
    add_label_conditioning,
    add_lora_adapters,
)
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.training.lora import parse_args, train_lora

SCRIPT = Path(__file__).parents[1] / "training" / "train_lora.py"
TRAIN_STEPS = 100
FAST = ["--rank", "4", "--train_batch_size", "8", "--learning_rate", "1e-3", "--checkpointing_steps", "2"]


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def randomise_adapters(unet: torch.nn.Module, seed: int = 0) -> None:
    """Give the adapters and the class embedding non-zero weights, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.3)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny untrained DDIM pipeline folder (1x16x16, 100 diffusion steps) standing in for the audited model."""
    path = tmp_path_factory.mktemp("target") / "ddim"
    DDIMPipeline(unet=make_tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=TRAIN_STEPS)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return make_labelled_data(tmp_path_factory.mktemp("labels") / "labels")


def run_args(target: Path, data: Path, output: Path, *extra: str) -> list[str]:
    paths = ["--pretrained_model_name_or_path", str(target), "--train_data_dir", str(data)]
    return [*paths, "--output_dir", str(output), *FAST, *extra]


def test_zero_initialised_conditioning_and_adapters_leave_outputs_bit_identical(single_thread):
    unet = make_tiny_unet()
    conditional = add_label_conditioning(unet, num_labels=3)
    add_lora_adapters(conditional, rank=4)
    sample, timesteps = torch.randn(4, 1, 16, 16, generator=generator()), torch.tensor([0, 10, 50, 99])
    with torch.no_grad():
        expected = unet(sample, timesteps).sample
        for label in range(4):  # the three surrogate labels and the null label
            output = conditional(sample, timesteps, class_labels=torch.full((4,), label)).sample
            assert torch.equal(output, expected), label
    trainable = [name for name, p in conditional.named_parameters() if p.requires_grad]
    adapted = {name.split(".lora_")[0].split(".", 1)[0] + ":" + name.split(".lora_")[0].rsplit(".", 1)[-1]
               for name in trainable if ".lora_" in name}
    assert "class_embedding.weight" in trainable and all(".lora_" in n for n in trainable if n != "class_embedding.weight")
    assert adapted == {"down_blocks:conv1", "down_blocks:conv2", "down_blocks:time_emb_proj", "mid_block:to_q",
                       "mid_block:to_k", "mid_block:to_v", "mid_block:0", "mid_block:conv1", "mid_block:conv2",
                       "mid_block:time_emb_proj", "up_blocks:conv1", "up_blocks:conv2", "up_blocks:time_emb_proj"}
    assert unet.class_embedding is None  # the original is left as it was


@pytest.mark.parametrize("reference_pipeline, scheduler_class", [(DDIMPipeline, DDIMScheduler), (DDPMPipeline, DDPMScheduler)])
@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 3.0])
def test_untrained_pipeline_samples_exactly_like_diffusers(reference_pipeline, scheduler_class, guidance_scale, single_thread):
    unet, scheduler = make_tiny_unet(), scheduler_class(num_train_timesteps=TRAIN_STEPS)
    expected = reference_pipeline(unet, scheduler)(batch_size=3, num_inference_steps=6, generator=generator(2), output_type="np")
    pipe = SIDELoRAPipeline.from_base(reference_pipeline(unet, scheduler), num_labels=3, rank=4)
    out = pipe(batch_size=3, target=[0, 1, 2], guidance_scale=guidance_scale,
               num_inference_steps=6, generator=generator(2), output_type="np")
    if guidance_scale in (0, 1):  # one UNet call per step, with the null label or the targets
        assert np.array_equal(out.images, expected.images)
    else:  # the conditional and null predictions run as one batch of 6: equal up to float rounding
        np.testing.assert_allclose(out.images, expected.images, atol=1e-5)


def test_labels_and_guidance_scale_change_samples_and_keep_shapes():
    pipe = SIDELoRAPipeline.from_base(DDIMPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)), 3, 4)
    randomise_adapters(pipe.unet)

    def sample(**kwargs):
        return pipe(batch_size=2, num_inference_steps=4, generator=generator(5), output_type="pt", **kwargs)

    per_label = [sample(target=label).images for label in range(3)]
    unconditional, guided = sample(guidance_scale=0), sample(target=1, guidance_scale=3.0)
    for images in [*per_label, unconditional.images, guided.images]:
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    assert not torch.allclose(per_label[0], per_label[1]) and not torch.allclose(per_label[1], per_label[2])
    assert not torch.allclose(guided.images, per_label[1]) and not torch.allclose(unconditional.images, per_label[1])
    assert unconditional.targets is None and guided.targets.tolist() == [1, 1]
    null_with_targets = sample(target=[0, 2], guidance_scale=0)  # targets kept for the record, not used
    assert torch.equal(null_with_targets.images, unconditional.images) and null_with_targets.targets.tolist() == [0, 2]
    drawn = pipe(batch_size=6, num_inference_steps=1, generator=[generator(s) for s in range(6)], output_type="np")
    again = pipe(batch_size=6, num_inference_steps=1, generator=[generator(s) for s in range(6)], output_type="np")
    assert drawn.targets.tolist() == again.targets.tolist() and set(drawn.targets.tolist()) <= {0, 1, 2}


def test_save_and_load_round_trip_restores_every_weight(tmp_path, target):
    pipe = SIDELoRAPipeline.from_base(str(target), num_labels=3, rank=4, label_info={"extractor": "unet"})
    randomise_adapters(pipe.unet)
    pipe.save_pretrained(tmp_path / "lora")
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == sorted([ADAPTER_WEIGHT_NAME, CLASS_EMBEDDING_NAME, LORA_CONFIG_NAME])
    saved_adapters = load_file(str(tmp_path / "lora" / ADAPTER_WEIGHT_NAME))
    assert saved_adapters and all("lora_" in key for key in saved_adapters)  # adapters only, the base is referenced

    loaded = SIDELoRAPipeline.from_pretrained(tmp_path / "lora")
    expected, actual = pipe.unet.state_dict(), loaded.unet.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert loaded.label_info == {"num_labels": 3, "extractor": "unet"} and loaded.base_model == str(target)
    assert get_peft_model_state_dict(loaded.unet).keys() == saved_adapters.keys()
    pipe.unet.requires_grad_(False)  # as loaded: torch picks another convolution kernel for weights that require grad
    kwargs = dict(batch_size=2, target=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="np")
    assert np.array_equal(pipe(generator=generator(1), **kwargs).images, loaded(generator=generator(1), **kwargs).images)


def test_loading_refuses_pickle_a_foreign_folder_and_another_base(tmp_path, target):
    pipe = SIDELoRAPipeline.from_base(str(target), num_labels=3, rank=4)
    pipe.save_pretrained(tmp_path / "lora")
    with pytest.raises(FileNotFoundError, match="not a LoRA-SIDE folder"):
        SIDELoRAPipeline.from_pretrained(target)
    other = tmp_path / "other-base"
    DDIMPipeline(make_tiny_unet(sample_size=8), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)).save_pretrained(other)
    with pytest.raises(ValueError, match=r"not the one these adapters were trained on .*\['sample_size'\]"):
        SIDELoRAPipeline.from_pretrained(tmp_path / "lora", base_model=str(other))
    weights = tmp_path / "lora" / ADAPTER_WEIGHT_NAME
    torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(OSError, match="read from safetensors only"):
        SIDELoRAPipeline.from_pretrained(tmp_path / "lora")


def test_loads_from_hub_repo_ids_through_offline_cache(tmp_path, target):
    """Both the adapters and the base they name resolve through huggingface_hub's cache with HF_HUB_OFFLINE=1."""
    hub = tmp_path / "hub"
    for repo, folder in (("auditor/ddim-tiny", target), ("auditor/lora-side-tiny", tmp_path / "lora")):
        if repo.endswith("lora-side-tiny"):
            pipe = SIDELoRAPipeline.from_base(str(target), num_labels=3, rank=4)
            randomise_adapters(pipe.unet)
            pipe.base_model = "auditor/ddim-tiny"
            pipe.save_pretrained(folder)
        commit = "0123456789abcdef0123456789abcdef0123456" + str(len(repo) % 10)
        repo_cache = hub / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, repo_cache / "snapshots" / commit)
        (repo_cache / "refs").mkdir()
        (repo_cache / "refs" / "main").write_text(commit)
    script = (
        "import torch; from diffusers_side import SIDELoRAPipeline\n"
        "hub = SIDELoRAPipeline.from_pretrained('auditor/lora-side-tiny')\n"
        f"local = SIDELoRAPipeline.from_pretrained({str(tmp_path / 'lora')!r}, base_model={str(target)!r})\n"
        "a, b = hub.unet.state_dict(), local.unet.state_dict()\n"
        "assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)\n"
        "from diffusers_side.pipelines.loading import load_pipeline\n"
        "print('hub-ok', hub.base_model, hub.num_labels, type(load_pipeline('auditor/lora-side-tiny')).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hub-ok auditor/ddim-tiny 3 SIDELoRAPipeline" in result.stdout


def test_fine_tuning_saves_adapters_card_and_log(target, labelled, tmp_path):
    output = tmp_path / "lora"
    argv = run_args(target, labelled, output, "--max_train_steps", "3")
    train_lora(parse_args(argv))

    config = json.loads((output / LORA_CONFIG_NAME).read_text())
    assert config["base_model"] == str(target.resolve()) and config["num_labels"] == NUM_CLASSES
    assert config["label_info"] == surrogate_labels().to_label_info() and config["rank"] == 4
    pipe = SIDELoRAPipeline.from_pretrained(output)
    assert pipe.unet.class_embedding.weight.abs().sum() > 0  # trained away from zero
    assert json.loads((output / "train_log.json").read_text())["global_step"] == 3
    card = ModelCard.load(output / "README.md")
    assert "side-lora" in card.data.tags and "rank 4, alpha 4" in card.text
    assert "python training/train_lora.py " + " ".join(argv) in card.text
    assert pipe(batch_size=2, target=[0, 2], num_inference_steps=2, output_type="pt").images.shape == (2, 1, 16, 16)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(target, labelled, tmp_path):
    train_lora(parse_args(run_args(target, labelled, tmp_path / "split", "--max_train_steps", "4", "--random_flip")))
    resume = ["--max_train_steps", "7", "--resume_from_checkpoint", "latest", "--random_flip"]
    train_lora(parse_args(run_args(target, labelled, tmp_path / "split", *resume)))
    train_lora(parse_args(run_args(target, labelled, tmp_path / "whole", "--max_train_steps", "7", "--random_flip")))

    for name in (ADAPTER_WEIGHT_NAME, CLASS_EMBEDDING_NAME):
        resumed, whole = load_file(str(tmp_path / "split" / name)), load_file(str(tmp_path / "whole" / name))
        assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole), name
    log = json.loads((tmp_path / "split" / "train_log.json").read_text())
    assert log["global_step"] == 7 and log["resumed_from"].endswith("checkpoint-4")


def tiny_condition_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2,
    )


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: add_lora_adapters(add_label_conditioning(make_tiny_unet(), 3), rank=0), ValueError, r"rank=0 must be a positive integer"),
        (lambda: add_lora_adapters(add_label_conditioning(make_tiny_unet(), 3), rank=-2), ValueError, r"rank=-2"),
        (lambda: add_label_conditioning(make_tiny_unet(), 0), ValueError, r"num_labels=0 must be a positive integer"),
        (lambda: add_label_conditioning(tiny_condition_unet(), 3), TypeError, r"needs a UNet2DModel, got UNet2DConditionModel"),
        (lambda: add_label_conditioning(add_label_conditioning(make_tiny_unet(), 3), 3), ValueError, r"already class-conditional"),
        (lambda: add_lora_adapters(add_label_conditioning(make_tiny_unet(), 3), 4, target_modules=["to_q", "proj_in"]),
         ValueError, r"\['proj_in'\] match no linear or convolution layer of this UNet2DModel; .*'conv1'"),
    ],
)
def test_bad_conditioning_and_adapters_are_refused(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": 3}, r"target=3 is out of range: there are 3 surrogate labels \(valid targets are 0..2; 3 is the null"),
        ({"target": [-1, 0]}, "out of range"),
        ({"target": [0, 1, 2]}, "Got 3 targets for batch_size=2"),
        ({"guidance_scale": -1.0}, r"guidance_scale=-1.0 must be finite and >= 0; use 0 \(unconditional\)"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan must be finite"),
        ({"output_type": "latent"}, "output_type='latent' is not supported"),
        ({"num_inference_steps": 0}, r"num_inference_steps=0 must be a positive integer"),
        ({"num_inference_steps": 2.5}, r"num_inference_steps=2.5 must be a positive integer"),
        ({"num_inference_steps": True}, r"num_inference_steps=True must be a positive integer"),
        ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
        ({"generator": [torch.Generator()]}, r"list of 1 generators for batch_size=2"),
    ],
)
def test_bad_sampling_inputs_raise_before_sampling(kwargs, message):
    pipe = SIDELoRAPipeline.from_base(DDIMPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)), 3, 4)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=message):
        pipe(**{"batch_size": 2, "num_inference_steps": 1, **kwargs})
    assert calls == []


def test_bad_numbers_are_refused_when_parsing(capsys):
    for flag, value, message in (("--rank", "0", "expected a positive integer"), ("--lora_alpha", "-1", "expected a finite number > 0"),
                                 ("--label_dropout", "nan", "expected a finite number")):
        with pytest.raises(SystemExit):
            parse_args(["--output_dir", "out", flag, value])
        assert f"argument {flag}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label_dropout", "1"], r"--label_dropout must be in \[0, 1\), got 1.0"),
        (["--use_ema"], "--use_ema is not supported"),
        (["--resolution", "32"], "--resolution 32 differs from the target's resolution 16"),
        (["--lora_target_modules", "attn1"], r"\['attn1'\] match no linear or convolution layer"),
    ],
)
def test_bad_flags_fail_before_training(target, labelled, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_lora(parse_args(run_args(target, labelled, tmp_path / "out", *extra)))
    assert not (tmp_path / "out" / "checkpoint-2").exists() and not (tmp_path / "out" / LORA_CONFIG_NAME).exists()


@pytest.mark.multiprocess
def test_two_processes_with_accelerate_launch(target, labelled, tmp_path):
    output = tmp_path / "ddp"
    result = launch_two_processes(str(SCRIPT), *run_args(target, labelled, output, "--max_train_steps", "3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((output / "checkpoint-2").glob("random_states_*.pkl"))) == 2
    assert json.loads((output / "train_log.json").read_text())["global_step"] == 3
    assert "batch 16 (8 per process x 2 processes x 1 accumulation)" in (output / "README.md").read_text()
    assert SIDELoRAPipeline.from_pretrained(output).num_labels == NUM_CLASSES


@pytest.fixture(scope="module")
def trained_lora(target, labelled, tmp_path_factory) -> Path:
    """A LoRA-SIDE folder trained for 3 steps through `side train-lora`."""
    output = tmp_path_factory.mktemp("lora") / "lora-side"
    assert side(["train-lora", *run_args(target, labelled, output, "--max_train_steps", "3")]) == 0
    return output


def test_side_lora_extracts_through_the_engine_with_the_classifier_branch_targets(trained_lora, target, tmp_path, capsys):
    common = ["--num-images", "5", "--batch-size", "2", "--num-inference-steps", "2", "--seed", "7"]
    assert side(["extract", "--method", "side-lora", "--pipeline", str(trained_lora), *common, "--output", str(tmp_path / "x")]) == 0
    dataset = load_image_dataset(tmp_path / "x")
    assert dataset["target"] == [image_target(image_seed(7, i, EXTRACTION), NUM_CLASSES) for i in range(5)]  # as `side extract --method side`
    assert set(dataset["guidance_scale"]) == {1.0} and set(dataset["method"]) == {"side-lora"}

    pipe = load_pipeline(str(trained_lora))
    assert isinstance(pipe, SIDELoRAPipeline) and pipe.num_labels == NUM_CLASSES
    first = pipe(target=dataset["target"][0], num_inference_steps=2, generator=torch.Generator().manual_seed(image_seed(7, 0, EXTRACTION)),
                 output_type="np").images[0]
    assert np.array_equal(np.asarray(dataset["image"][0]), (first[..., 0] * 255).round().astype(np.uint8))

    for method, pipeline, message in (("side", trained_lora, "is a LoRA-SIDE folder; pass the base pipeline"),
                                      ("uncond", trained_lora, "is a LoRA-SIDE folder"),
                                      ("side-lora", target, "pass the output folder of `side train-lora`")):
        assert side(["extract", "--method", method, "--pipeline", str(pipeline), *common, "--output", str(tmp_path / method)]) == 2
        assert message in capsys.readouterr().err


def test_sweep_over_the_classifier_free_guidance_scale(trained_lora, tmp_path):
    argv = ["sweep", "--method", "side-lora", "--pipeline", str(trained_lora), "--guidance-scales", "0,2",
            "--num-images", "2", "--num-inference-steps", "2", "--output", str(tmp_path / "sweep")]
    assert side(argv) == 0
    results = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert set(results) == {"0", "2"}
    assert set(load_image_dataset(tmp_path / "sweep" / "scale-2")["guidance_scale"]) == {2.0}


def test_push_uploads_adapters_only_when_the_base_is_shareable(trained_lora, target, labelled, tmp_path, monkeypatch, capsys):
    uploads = {}

    class Repo:
        repo_id = "me/lora-side"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kwargs: uploads.update(kwargs) or "commit-url")
    assert side(["push", str(trained_lora), "--repo", "me/lora-side"]) == 2  # its base is a local folder
    assert "which a Hub user cannot load; push the base pipeline first" in capsys.readouterr().err
    shareable = tmp_path / "shareable"
    shutil.copytree(trained_lora, shareable)
    config = json.loads((shareable / LORA_CONFIG_NAME).read_text())
    (shareable / LORA_CONFIG_NAME).write_text(json.dumps({**config, "base_model": "me/ddim-tiny"}))
    assert side(["push", str(shareable), "--repo", "me/lora-side"]) == 0
    assert uploads["folder_path"] == str(shareable) and "checkpoint-*" in uploads["ignore_patterns"]
    with pytest.raises(ValueError, match="which a Hub user cannot load"):  # refused before training
        train_lora(parse_args(run_args(target, labelled, tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/x")))
    assert not (tmp_path / "out").exists()
