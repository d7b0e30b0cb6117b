"""The method registry: one record per method feeds validation, the CLI, cards, the demo and the engine."""

import dataclasses
import json

import pytest
from test_generation import settings, tiny_pipeline

from diffusers_side.cli import build_parser
from diffusers_side.generation.engine import generate
from diffusers_side.generation.hub import extraction_card
from diffusers_side.generation.settings import GenerationSettings, prepare_output_dir
from diffusers_side.methods import registry as methods
from diffusers_side.methods.classifier import ClassifierMethod
from diffusers_side.methods.lora import LoRAMethod
from diffusers_side.methods.registry import ShardRequest, get_method, register_method
from diffusers_side.storage.generation_folder import SETTINGS_FILE


def test_records_of_the_builtin_methods():
    assert methods.extraction_method_names() == ("side", "uncond", "cond", "side-lora", "side-exemplar")
    assert methods.guided_method_names() == ("side", "cond", "side-lora", "side-exemplar")
    assert isinstance(get_method("side-lora"), LoRAMethod) and not get_method("side-lora").in_demo
    assert get_method("side").time_dependent is True and get_method("cond").time_dependent is False
    assert [get_method(name).default_guidance_scale for name in ("side", "cond", "uncond")] == [1.0, 1.0, 0.0]
    assert not get_method("synthetic").extractable and not get_method("uncond").guided
    exemplar = get_method("side-exemplar")
    assert exemplar.guided and exemplar.accepts("exemplars", "dir") and not get_method("side").accepts("exemplars", "dir")
    assert exemplar.default_guidance_scale == 10.0
    # lambda: the method's default when none is asked for; unguided methods sample at 0 and refuse any other
    assert [exemplar.resolve_guidance_scale(None), exemplar.resolve_guidance_scale(2), get_method("uncond").resolve_guidance_scale(0)] == [10.0, 2.0, 0.0]
    with pytest.raises(ValueError, match=r"method='uncond' samples without guidance but guidance_scale=3.*drop --guidance-scale 3"):
        get_method("uncond").resolve_guidance_scale(3)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"method='sidee' is not one of \('synthetic', 'side', 'uncond', 'cond', 'side-lora', 'side-exemplar'\)"):
        get_method("sidee")
    with pytest.raises(ValueError, match="method='sidee' is not one of"):
        settings(method="sidee").validate()


def test_a_registered_method_reaches_the_cli_the_card_and_the_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    calls = []

    def sample(pipe, request: ShardRequest):
        calls.append(request)
        return methods.sample_with_pipeline(pipe, request)

    register_method(ClassifierMethod("side-twice", "SIDE at twice the scale", default_guidance_scale=2.0, sample=sample))
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("side"))
    extract = build_parser().parse_args(["extract", "--method", "side-twice", "--num-images", "1", "--output", "x"])
    assert extract.method == "side-twice"
    new_settings = settings(method="side-twice", num_images=2, batch_size=2)
    assert "SIDE at twice the scale" in str(extraction_card(new_settings, "side extract --method side-twice"))
    dataset = generate(tiny_pipeline(), tmp_path / "run", new_settings)
    assert dataset["method"] == ["side-twice"] * 2 and len(calls) == 1 and calls[0].targets is not None
    with pytest.raises(ValueError, match="needs a time-dependent classifier"):
        generate(tiny_pipeline(time_dependent=False), tmp_path / "other", new_settings)


def test_generation_folder_of_an_older_version_resumes(tmp_path):
    run = settings()
    prepare_output_dir(tmp_path / "run", run)
    settings_file = tmp_path / "run" / SETTINGS_FILE
    settings_file.write_text(json.dumps({**dataclasses.asdict(run), "extra": {}}))  # written before `extra` was dropped
    prepare_output_dir(tmp_path / "run", run)
    assert GenerationSettings.from_dict(json.loads(settings_file.read_text())) == run


@pytest.mark.parametrize("command, names", [("extract", methods.extraction_method_names()), ("sweep", methods.guided_method_names())])
def test_help_names_every_method_and_its_default_scale(command, names, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in names:
        method = get_method(name)
        default = f"(default {method.scale_name} {method.default_guidance_scale:g})" if method.guided else "(unguided)"
        assert f"{name}: {method.description} {'(default 1)' if name == 'side-lora' else default}" in text, name
    assert "side-exemplar: SIDE with exemplar (Bayes) guidance" in text and "(default lambda 10)" in text
