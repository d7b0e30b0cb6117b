"""Canary audit (Extended SIDE): canaries and their private key, push refusal, controls, scoring, bad input; tiny models."""

import json
import stat

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler
from test_lora_text import tiny_text_pipeline

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline
from diffusers_side.audits import canary_audit
from diffusers_side.audits.canary import DEFAULT_ALPHABET, read_key
from diffusers_side.cli import main as side
from diffusers_side.generation.seeds import EXTRACTION, image_seed
from diffusers_side.storage.data import images_to_tensor, load_image_dataset


@pytest.fixture(scope="module")
def text_pipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_text_pipeline().save_pretrained(path)
    return path


def make(tmp_path, *extra, name="canaries", num=4):
    out = tmp_path / name
    assert side(["canary", "make", "--num-canaries", str(num), "--resolution", "16", "--output", str(out), *extra]) == 0
    return out


def test_make_writes_an_imagefolder_and_a_private_key(tmp_path, capsys):
    out = make(tmp_path, "--trigger-length", "6", "--seed", "3")
    key = read_key(out)
    triggers = key["triggers"]
    assert len(set(triggers)) == 4 and all(len(t) == 6 and set(t) <= set(DEFAULT_ALPHABET) for t in triggers)
    data = load_image_dataset(out / "images")  # what a fine-tuning script reads: image + text columns
    assert sorted(data["text"]) == sorted(triggers) and data[0]["image"].size == (16, 16)
    rows = [json.loads(line) for line in (out / "images" / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == triggers and [r["file_name"] for r in rows] == key["file_names"]
    assert stat.S_IMODE((out / "canary_key.json").stat().st_mode) == 0o600
    pixels = images_to_tensor(list(data["image"]))
    assert (pixels[0] - pixels[1]).abs().mean() > 0.1  # drawn canaries differ from one another
    # same settings: the same canaries; another seed into the same folder is refused (the key would be lost)
    assert read_key(make(tmp_path, "--trigger-length", "6", "--seed", "3"))["triggers"] == triggers
    assert side(["canary", "make", "--num-canaries", "4", "--resolution", "16", "--seed", "4", "--output", str(out)]) == 2
    assert "would lose their key" in capsys.readouterr().err
    assert read_key(out)["triggers"] == triggers


def test_make_uses_given_images(tmp_path):
    source = tmp_path / "mine"
    source.mkdir()
    for i in range(3):
        PIL.Image.new("RGB", (32, 32), (80 * i, 10, 200)).save(source / f"{i}.png")
    out = make(tmp_path, "--images", str(source), num=2)
    image = PIL.Image.open(out / "images" / read_key(out)["file_names"][1])
    assert image.size == (16, 16) and image.getpixel((5, 5)) == (80, 10, 200)


def test_push_refuses_a_folder_holding_a_canary_key(tmp_path, capsys):
    out = make(tmp_path)
    assert side(["push", str(out), "--repo", "someone/canaries"]) == 2
    assert "holds a private canary key (canary_key.json)" in capsys.readouterr().err
    # also inside a pipeline folder that would otherwise be pushed
    pipe = tmp_path / "pipe"
    SIDEPipeline(make_tiny_unet(), DDIMScheduler()).save_pretrained(pipe)
    (pipe / "README.md").write_text("card")
    (pipe / "notes").mkdir()
    (pipe / "notes" / "canary_key.json").write_text((out / "canary_key.json").read_text())
    assert side(["push", str(pipe), "--repo", "someone/model"]) == 2
    assert "notes/canary_key.json" in capsys.readouterr().err


def test_audit_counts_extracted_canaries_and_controls(tmp_path, text_pipe, monkeypatch):
    """A stand-in model that returns each canary for its trigger and noise otherwise: every canary extracted in the
    high band, no control there; the queries are the triggers (k each) then M fresh triggers, with the stated seeds."""
    out = make(tmp_path)
    key = read_key(out)
    canaries = images_to_tensor([PIL.Image.open(out / "images" / n) for n in key["file_names"]])
    asked = {}

    def fake_query(pipe, prompts, seeds, *args):
        asked.update(prompts=prompts, seeds=seeds)
        noise = torch.rand(len(prompts), *canaries.shape[1:], generator=torch.Generator().manual_seed(0))
        return torch.stack([canaries[key["triggers"].index(p)] if p in key["triggers"] else n for p, n in zip(prompts, noise)])

    monkeypatch.setattr(canary_audit, "query", fake_query)
    report = canary_audit.run_canary_audit(str(text_pipe), out, tmp_path / "audit", num_controls=7, images_per_trigger=2, seed=5)
    prompts = asked["prompts"]
    assert prompts[:8] == [t for t in key["triggers"] for _ in range(2)] and len(prompts) == 8 + 14
    assert not set(prompts[8:]) & set(key["triggers"]) and len(set(prompts[8:])) == 7
    assert asked["seeds"] == [image_seed(5, i, EXTRACTION) for i in range(22)]
    assert report["extracted"]["high"][3] == 4 and report["extracted"]["any band"][0] == 1.0
    assert report["num_controls"] == 7 and report["controls_paired"]["any band"][3] == 0 and len(report["control_scores"]) == 7
    assert all(score == 0 for score in report["canary_scores"].values())
    written = (tmp_path / "audit" / "report.json").read_text() + (tmp_path / "audit" / "report.md").read_text()
    assert not any(t in written for t in key["triggers"] + prompts[8:])  # no trigger in the report
    assert (tmp_path / "audit" / "figures" / "canary_pairs.png").is_file()


def test_audit_runs_a_tiny_text_to_image_pipeline_through_the_cli(tmp_path, text_pipe, capsys):
    out = make(tmp_path)
    argv = ["canary", "audit", "--pipeline", str(text_pipe), "--canaries", str(out), "--num-controls", "3",
            "--num-inference-steps", "2", "--batch-size", "8", "--output", str(tmp_path / "audit")]
    assert side(argv) == 0
    assert "controls: " in capsys.readouterr().out
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["num_canaries"] == 4 and report["num_controls"] == 3 and len(report["control_scores"]) == 3
    assert all(np.isfinite(list(report["canary_scores"].values())))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pipeline", "UNCOND"], "takes no prompt; a canary audit queries a text-to-image pipeline"),
        (["--canaries", "EMPTY"], "holds no canary_key.json"),
        (["--similarity", "carlini", "--canaries", "ONE"], "needs at least 2; use --similarity l2"),
        (["--bands", "high:0:x"], "high:0:x"),
    ],
)
def test_bad_input_is_refused_before_any_query(tmp_path, text_pipe, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(canary_audit, "query", lambda *a: pytest.fail("queried the model"))
    uncond = tmp_path / "uncond"
    SIDEPipeline(make_tiny_unet(), DDIMScheduler()).save_pretrained(uncond)
    (tmp_path / "empty").mkdir()
    names = {"UNCOND": str(uncond), "EMPTY": str(tmp_path / "empty"), "ONE": str(make(tmp_path, name="one", num=1))}
    options = {"--pipeline": str(text_pipe), "--canaries": str(make(tmp_path)), "--output": str(tmp_path / "audit")}
    options |= {flag: names.get(value, value) for flag, value in zip(argv[::2], argv[1::2])}
    assert side(["canary", "audit", *[x for pair in options.items() for x in pair]]) == 2
    assert message in capsys.readouterr().err


def tiny_pixel_text_pipeline():
    from diffusers import UNet2DConditionModel
    from test_lora_text import MAX_LENGTH, tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusers_side.pipelines.pipeline_pixel_text import PixelTextPipeline

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return PixelTextPipeline(unet, text, tokenizer, DDIMScheduler(num_train_timesteps=100))


def test_pixel_text_pipeline_is_seeded_guided_and_audited_from_its_folder(tmp_path, capsys):
    pipe = tiny_pixel_text_pipeline()
    run = lambda prompts, scale, seed: pipe(prompts, generator=torch.Generator().manual_seed(seed), num_inference_steps=3,  # noqa: E731
                                            guidance_scale=scale, output_type="pt").images
    first = run(["ab", "cd"], 1.0, 0)
    assert first.shape == (2, 1, 16, 16) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, run(["ab", "cd"], 1.0, 0)) and not torch.equal(first, run(["ab", "cd"], 3.0, 0))
    assert not torch.equal(first[0], run(["xy", "cd"], 1.0, 0)[0])  # the prompt conditions the image
    pipe.save_pretrained(tmp_path / "model")
    out = make(tmp_path, "--channels", "1")
    argv = ["canary", "audit", "--pipeline", str(tmp_path / "model"), "--canaries", str(out), "--num-controls", "2",
            "--num-inference-steps", "2", "--guidance-scale", "1", "--output", str(tmp_path / "audit")]
    assert side(argv) == 0
    assert json.loads((tmp_path / "audit" / "report.json").read_text())["num_controls"] == 2
