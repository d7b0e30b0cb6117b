"""SIDE's LoRA branch on a text-conditional pipeline, built from tiny components (no download)."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from conftest import make_tiny_unet
from diffusers_side.cli import main as side
from diffusers_side.generation.engine import image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.models.lora import ADAPTER_WEIGHT_NAME, LORA_CONFIG_NAME
from diffusers_side.pipelines.pipeline_side_lora import SIDELoRAPipeline
from diffusers_side.pipelines.pipeline_side_lora_text import SIDELoRATextPipeline, label_identifier, label_prompt
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.training.lora import parse_args, train_lora

PROMPT = "a photo"
NUM_LABELS = 3
MAX_LENGTH = 16


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes only: every character is a token (no merges, no download)."""
    characters = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_LENGTH)


def tiny_text_pipeline() -> StableDiffusionPipeline:
    """A Stable-Diffusion-shaped pipeline of tiny random components: 3x16x16 images, 4x8x8 latents."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        sample_size=16,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=100), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_text_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """24 RGB 16x16 "decoded samples" with labels 0, 1, 2 (red, green, blue tint)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for index in range(24):
        pixels = rng.uniform(0, 80, (16, 16, 3))
        pixels[..., index % NUM_LABELS] += 150
        images.append(PIL.Image.fromarray(pixels.astype(np.uint8)))
        labels.append(index % NUM_LABELS)
    path = tmp_path_factory.mktemp("labels") / "labels"
    features = Features({"image": Image(), "label": Value("int64")})
    Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return path


def randomise_adapters(unet: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.3)


def test_label_identifiers_are_unique_non_words():
    identifiers = [label_identifier(k) for k in range(8000)]
    assert len(set(identifiers)) == 8000 and identifiers[:2] == ["zqbbb", "zqbbc"]
    assert all(not set(i[2:]) & set("aeiouy") for i in identifiers)
    assert label_prompt(PROMPT, 2) == "a photo zqbbd" and label_prompt(PROMPT, None) == PROMPT
    with pytest.raises(ValueError, match="label=8000 has no identifier"):
        label_identifier(8000)


def test_untrained_adapters_sample_exactly_like_stable_diffusion(single_thread):
    base = tiny_text_pipeline()
    kwargs = dict(num_inference_steps=4, output_type="np")
    expected = base(PROMPT, num_images_per_prompt=2, guidance_scale=1.0, generator=generator(3), **kwargs).images
    pipe = SIDELoRATextPipeline.from_base(base, NUM_LABELS, rank=2, prompt=PROMPT)
    assert np.array_equal(pipe(batch_size=2, guidance_scale=0, generator=generator(3), **kwargs).images, expected)
    labelled = base(label_prompt(PROMPT, 1), num_images_per_prompt=2, guidance_scale=1.0, generator=generator(3), **kwargs)
    out = pipe(batch_size=2, target=1, generator=generator(3), **kwargs)
    assert np.array_equal(out.images, labelled.images) and out.targets.tolist() == [1, 1]


def test_labels_and_guidance_change_samples_and_keep_shapes():
    pipe = SIDELoRATextPipeline.from_base(tiny_text_pipeline(), NUM_LABELS, rank=2, prompt=PROMPT)
    randomise_adapters(pipe.unet)
    trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ".attn" in n for n in trainable)  # attention layers only

    def sample(**kwargs):
        return pipe(batch_size=2, num_inference_steps=3, generator=generator(5), output_type="pt", **kwargs).images

    images = [sample(target=k) for k in range(NUM_LABELS)] + [sample(guidance_scale=0), sample(target=0, guidance_scale=4)]
    assert all(i.shape == (2, 3, 16, 16) and torch.isfinite(i).all() for i in images)
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[0], images[4])
    assert not torch.allclose(images[3], images[0])
    other_prompt = pipe(["a dog", "a cat"], batch_size=2, target=0, num_inference_steps=3, generator=generator(5),
                        output_type="pt").images
    assert not torch.allclose(other_prompt, images[0])


def test_fine_tuning_saves_adapters_that_load_back(target, labelled, tmp_path):
    output = tmp_path / "lora"
    argv = ["--pretrained_model_name_or_path", str(target), "--train_data_dir", str(labelled), "--output_dir", str(output),
            "--prompt", PROMPT, "--rank", "2", "--train_batch_size", "4", "--max_train_steps", "2", "--learning_rate", "1e-3"]
    train_lora(parse_args(argv))

    config = json.loads((output / LORA_CONFIG_NAME).read_text())
    assert config["pipeline_class"] == "SIDELoRATextPipeline" and config["prompt"] == PROMPT
    assert config["label_identifiers"] == ["zqbbb", "zqbbc", "zqbbd"]
    assert sorted(config["target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]
    pipe = SIDELoRATextPipeline.from_pretrained(output)
    saved = load_file(str(output / ADAPTER_WEIGHT_NAME))
    loaded = {k: v for k, v in pipe.unet.state_dict().items() if ".lora_" in k}
    assert {k.replace(".default", "") for k in loaded} == set(saved)
    assert all(torch.equal(loaded[k], saved[k.replace(".default", "")]) for k in loaded)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained away from the identity
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "text-to-image" and "prompt `a photo` + one identifier per label" in card.text
    assert pipe(batch_size=1, target=2, num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], r"is a text-conditional pipeline: pass --prompt"),
        (["--prompt", PROMPT, "--resolution", "8"], "--resolution 8 differs from the target's resolution 16"),
        (["--prompt", PROMPT, "--lora_target_modules", "conv1,proj_x"], r"\['proj_x'\] match no linear or convolution"),
    ],
)
def test_bad_flags_fail_before_training(target, labelled, tmp_path, extra, message):
    argv = ["--pretrained_model_name_or_path", str(target), "--train_data_dir", str(labelled),
            "--output_dir", str(tmp_path / "out"), *extra]
    with pytest.raises(ValueError, match=message):
        train_lora(parse_args(argv))
    assert not (tmp_path / "out" / LORA_CONFIG_NAME).exists()


def test_missing_prompt_and_wrong_pipeline_kind_are_refused(target, tmp_path):
    pipe = SIDELoRATextPipeline.from_base(tiny_text_pipeline(), NUM_LABELS, rank=2)
    with pytest.raises(ValueError, match="needs a prompt"):
        pipe(batch_size=1, num_inference_steps=1)
    with pytest.raises(ValueError, match="Got 3 prompts for batch_size=2"):
        pipe(["a", "b", "c"], batch_size=2, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"target=3 is out of range"):
        pipe(PROMPT, target=3, num_inference_steps=1)
    with pytest.raises(TypeError, match="DDIMPipeline is not a text-conditional pipeline"):
        SIDELoRATextPipeline.from_base(DDIMPipeline(make_tiny_unet(), DDIMScheduler()), NUM_LABELS, rank=2)
    with pytest.raises(TypeError, match="use SIDELoRATextPipeline"):
        SIDELoRAPipeline.from_base(str(target), NUM_LABELS, rank=2)


def test_side_extract_samples_a_text_lora_folder_with_its_training_prompt(target, labelled, tmp_path):
    output = tmp_path / "lora"
    train_lora(parse_args(["--pretrained_model_name_or_path", str(target), "--train_data_dir", str(labelled),
                           "--output_dir", str(output), "--prompt", PROMPT, "--rank", "2", "--max_train_steps", "1"]))
    argv = ["extract", "--method", "side-lora", "--pipeline", str(output), "--num-images", "3", "--batch-size", "2",
            "--num-inference-steps", "2", "--seed", "3", "--output", str(tmp_path / "x")]
    assert side(argv) == 0
    dataset = load_image_dataset(tmp_path / "x")
    assert dataset["target"] == [image_target(image_seed(3, i, EXTRACTION), NUM_LABELS) for i in range(3)]
    assert dataset[0]["image"].size == (16, 16) and dataset[0]["image"].mode == "RGB"
