"""One rule for "embedded name, local folder or Hub repo id" (`ModelSource`), and every loader follows it."""

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, cli
from diffusers_side.generation.settings import GenerationSettings
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.storage.embedded import DEFAULT_PIPELINE_DIR, EMBEDDED_MODELS
from diffusers_side.storage.sources import ModelSource, canonical_source

COMMIT_MAIN = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V1 = "89abcdef0123456789abcdef0123456789abcdef"


def tiny_pipeline(path: Path, seed: int = 3) -> Path:
    SIDEPipeline(make_tiny_unet(seed=seed), DDIMScheduler(num_train_timesteps=100)).save_pretrained(path)
    return path


@pytest.fixture
def shadowing_folder(tmp_path, monkeypatch):
    """The working directory holds a pipeline folder called ``default``, like the embedded model."""
    monkeypatch.chdir(tmp_path)
    return tiny_pipeline(tmp_path / "default")


def test_each_kind_of_source_and_how_it_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_pipeline(tmp_path / "mine")
    embedded, local, hub = ModelSource.parse("digits-rare"), ModelSource.parse("mine"), ModelSource.parse("user/repo")
    assert (embedded.kind, embedded.canonical(), embedded.hub_id) == ("embedded", "digits-rare", None)
    assert embedded.local_path() == EMBEDDED_MODELS["digits-rare"].folder
    assert (local.kind, local.canonical(), local.hub_id) == ("local", str(tmp_path / "mine"), None)
    assert (hub.kind, hub.canonical(), hub.hub_id, hub.revision) == ("hub", "user/repo", "user/repo", None)
    pinned = ModelSource.parse("user/repo@v1")
    assert (pinned.location, pinned.revision, pinned.canonical()) == ("user/repo", "v1", "user/repo@v1")
    assert ModelSource.parse("user/repo", revision="v1") == ModelSource("user/repo", "hub", "user/repo", "v1")
    # A Path is always a path, and the embedded model's own folder is the embedded model.
    assert ModelSource.parse(Path("mine")).kind == "local"
    assert ModelSource.parse(str(DEFAULT_PIPELINE_DIR)).canonical() == "default"
    with pytest.raises(FileNotFoundError, match=r"Model source 'default' does not exist"):
        ModelSource.parse(Path("default"))


@pytest.mark.parametrize(
    "spec, revision, error, message",
    [
        ("./missing", None, FileNotFoundError, r"--pipeline './missing' does not exist; pass a folder, a Hub repo id or an embedded model \('default', 'digits-rare'\)"),
        ("/no/such/folder", None, FileNotFoundError, "does not exist"),
        ("weights.safetensors", None, FileNotFoundError, r"'weights.safetensors' does not exist"),
        ("file.txt", None, NotADirectoryError, r"--pipeline 'file.txt' is a file; pass a folder"),
        ("not a repo!", None, ValueError, r"'not a repo!' is no local folder and no valid Hub repo id"),
        ("user/repo@", None, ValueError, r"ends in '@' without a revision; write user/repo@BRANCH_TAG_OR_COMMIT"),
        ("user/repo@v1", "v2", ValueError, r"names revision 'v1' but revision='v2' was also given"),
        ("default", "v1", ValueError, r"is the embedded model 'default': revision='v1' applies to Hub repo ids only"),
    ],
)
def test_bad_sources_are_refused_with_what_to_pass(tmp_path, monkeypatch, spec, revision, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a model")
    with pytest.raises(error, match=message):
        ModelSource.parse(spec, revision, what="--pipeline")


def test_a_folder_named_like_an_embedded_model_is_never_silently_shadowed(shadowing_folder, capsys):
    """Issue 21, defect 9: ``./default`` is the folder; a bare ``default`` is refused, naming both."""
    with pytest.raises(ValueError, match=r"'default' names both the embedded model 'default' and the folder .*default: "
                                         r"write ./default for the folder, or .*default_model"):
        load_pipeline("default")
    local = load_pipeline("./default")
    mine = make_tiny_unet(seed=3).state_dict()
    assert all(torch.equal(local.unet.state_dict()[k], v) for k, v in mine.items())
    embedded = load_pipeline(str(DEFAULT_PIPELINE_DIR))  # the way to the embedded model from this directory
    assert embedded.unet.config.block_out_channels != local.unet.config.block_out_channels
    assert cli.main(["synthesize", "--pipeline", "default", "--num-samples", "2", "--output", "out"]) == 2
    assert "names both the embedded model 'default' and the folder" in capsys.readouterr().err
    assert not Path("out").exists()


def test_a_data_folder_named_like_an_embedded_model_is_never_silently_shadowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_image_dataset("default").select(range(3)).save_to_disk(str(tmp_path / "digits-rare"))
    with pytest.raises(ValueError, match=r"Image data set 'digits-rare' names both the embedded model 'digits-rare' and "
                                         r"the folder .*: write ./digits-rare for the folder"):
        load_image_dataset("digits-rare")
    assert len(load_image_dataset("./digits-rare")) == 3 and len(load_image_dataset("default")) == 100


def test_records_are_absolute_and_never_fail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = GenerationSettings(pipeline="./later", method="side", num_images=2, classifier="./runs/classifier")
    assert settings.pipeline == str(tmp_path / "later") and settings.classifier == str(tmp_path / "runs/classifier")
    assert canonical_source("runs/classifier") == "runs/classifier"  # not there (yet): that is a Hub repo id
    tiny_pipeline(tmp_path / "default")
    assert canonical_source("default") == "default"  # a record's bare name is the embedded model
    assert ModelSource.from_record("default").local_path() == DEFAULT_PIPELINE_DIR
    with pytest.raises(ValueError, match="names both"):
        ModelSource.parse("default")  # what a user types is still refused
    assert canonical_source("user/repo", revision="main") == "user/repo@main"


def hub_cache(tmp_path: Path) -> Path:
    """A huggingface_hub cache holding ``auditor/tiny`` at two commits: ``main`` and the tag ``v1``."""
    repo = tmp_path / "hub" / "models--auditor--tiny"
    tiny_pipeline(repo / "snapshots" / COMMIT_MAIN, seed=4)
    tiny_pipeline(repo / "snapshots" / COMMIT_V1, seed=5)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_MAIN)
    (repo / "refs" / "v1").write_text(COMMIT_V1)
    return tmp_path / "hub"


def test_hub_ids_resolve_through_the_offline_cache_at_their_revision(tmp_path):
    cache = hub_cache(tmp_path)
    main = ModelSource.parse("auditor/tiny").local_path(cache_dir=cache)
    assert main.name == COMMIT_MAIN
    assert ModelSource.parse("auditor/tiny@v1").local_path(cache_dir=cache).name == COMMIT_V1
    pinned = SIDEPipeline.from_pretrained("auditor/tiny", revision="v1", cache_dir=cache)
    assert torch.equal(pinned.unet.conv_in.weight, make_tiny_unet(seed=5).conv_in.weight)
    with pytest.raises(FileNotFoundError, match=r"'auditor/tiny@v2' is not a local folder, and fetching it as a Hub repo "
                                                r"id failed .*the revision"):
        ModelSource.parse("auditor/tiny@v2").local_path(cache_dir=cache)
