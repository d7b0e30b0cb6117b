"""Multi-step workflows behind the CLI: generation under accelerate, the guidance sweep, and pushing a folder.

`diffusers_side.cli` only parses arguments and prints; each command that chains library calls runs one
of these functions.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from datasets import Dataset

from ..evaluation.evaluate import evaluate
from ..evaluation.report import plot_sweep
from ..generation.engine import generate
from ..generation.hub import push_extraction
from ..generation.preflight import TargetFacts, check_generation, check_reference_reachable, check_reference_shape
from ..generation.settings import GenerationSettings, check_output_dir
from ..labels.features import check_feature_spec
from ..models.lora import LORA_CONFIG_NAME, check_shareable_base, read_lora_config
from ..pipelines.loading import load_pipeline
from ..storage.data import load_image_dataset
from ..storage.generation_folder import is_generation_folder
from ..storage.hub import push_folder
from ..storage.outputs import SWEEP, canary_key_files, check_output_folder, training_data_files
from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import SWEEP_CONFIG as SWEEP_CONFIG_FILE

SWEEP_PLOT = "sweep.png"
SWEEP_JSON = "sweep.json"
SWEEP_CONFIG = SWEEP_CONFIG_FILE.name


def create_accelerator() -> Accelerator:
    """An `Accelerator` on the available accelerator, or on CPU explicitly.

    Without a GPU, the processes of ``accelerate launch --multi_gpu`` must be told to use the CPU (gloo)
    to form one group.
    """
    return Accelerator(cpu=not torch.accelerator.is_available())


def run_generation(
    settings: GenerationSettings, output_dir: str | os.PathLike, allow_pickle: bool = False
) -> tuple[Dataset | None, Accelerator]:
    """Load the pipeline and generate ``settings`` into ``output_dir``, split over the accelerate processes.

    Args:
        settings ([`GenerationSettings`]): what to generate (validated before the pipeline is loaded).
        output_dir: the generation folder (a new one, or the same one to resume).
        allow_pickle (`bool`): accept pickled ``.bin`` weights.

    Returns:
        `tuple`: the generated data set (``None`` on processes other than the main one) and the accelerator.
    """
    accelerator = create_accelerator()
    settings.validate(accelerator.num_processes)
    if accelerator.is_main_process:  # the others would race the main process creating the folder
        check_output_dir(output_dir, settings)
    check_generation(settings)
    pipe = load_pipeline(settings.pipeline, settings.scheduler, settings.classifier, allow_pickle, accelerator.device)
    dataset = generate(pipe, output_dir, settings, accelerator)
    return (dataset if accelerator.is_main_process else None), accelerator


def run_sweep(
    base: GenerationSettings,
    guidance_scales: Sequence[float],
    output_dir: str | os.PathLike,
    reference: str,
    similarity: str | None = None,
    feature_extractor: str | None = None,
    allow_pickle: bool = False,
    on_scale_done: Callable[[float, Path], None] | None = None,
) -> Path:
    """Generate with ``base`` at every guidance scale (same seeds), evaluate each, and plot AMS/UMS against lambda.

    Args:
        base ([`GenerationSettings`]): the settings shared by every scale (its ``guidance_scale`` is replaced).
        guidance_scales: the lambdas.
        output_dir: gets ``scale-L/`` and ``scale-L-eval/`` per scale, ``sweep.json`` and ``sweep.png``.
        reference: the training set to score against.
        similarity, feature_extractor: as in [`~diffusers_side.evaluation.evaluate.evaluate`].
        allow_pickle (`bool`): accept pickled ``.bin`` weights.
        on_scale_done (`Callable`, *optional*): called as ``(scale, evaluation folder)`` after each scale.

    Returns:
        `Path`: the plot.
    """
    output_dir = Path(output_dir)
    check_scale_names(guidance_scales)
    settings_per_scale = {scale: _with_scale(base, scale) for scale in guidance_scales}
    for settings in settings_per_scale.values():
        settings.validate()
    check_generation(base)
    if feature_extractor is not None:
        check_feature_spec(feature_extractor, "--similarity")
    else:
        advice = "pass the training set of --pipeline as --reference, or compare embeddings with --similarity unet"
        check_reference_shape(reference, TargetFacts.from_files(base.pipeline), advice)
    check_reference_reachable(reference)
    config = {"guidance_scales": list(guidance_scales), "reference": reference, "similarity": similarity,
              "feature_extractor": feature_extractor, **{k: v for k, v in asdict(base).items() if k != "guidance_scale"}}
    check_sweep_folder(output_dir, config)
    accelerator = create_accelerator()
    pipe = load_pipeline(base.pipeline, base.scheduler, base.classifier, allow_pickle, accelerator.device)
    write_json_atomic(output_dir / SWEEP_CONFIG, config)
    results = {}
    for scale, settings in settings_per_scale.items():
        generate(pipe, output_dir / f"scale-{scale:g}", settings)
        evaluation_dir = output_dir / f"scale-{scale:g}-eval"
        results[scale] = evaluate(
            [output_dir / f"scale-{scale:g}"], reference, evaluation_dir, similarity=similarity,
            feature_extractor=feature_extractor, device=str(accelerator.device),
        )
        if on_scale_done is not None:
            on_scale_done(scale, evaluation_dir)
    plot = plot_sweep(results, output_dir / SWEEP_PLOT)
    write_json_atomic(output_dir / SWEEP_JSON, {f"{k:g}": v for k, v in results.items()})
    return plot


def check_scale_names(guidance_scales: Sequence[float]) -> None:
    """Refuse scales that are given twice or that share a folder name (``scale-{lambda:g}``, 6 significant digits).

    Raises:
        `ValueError`: naming the colliding scales and the fix.
    """
    names = {}
    for scale in guidance_scales:
        name = f"{scale:g}"
        if name in names:
            raise ValueError(
                f"--guidance-scales {names[name]!r} and {scale!r} are both written as scale-{name} (lambdas are named with "
                "6 significant digits): pass each lambda once, with values that differ in those digits."
            )
        names[name] = scale


def check_sweep_folder(output_dir: Path, config: dict) -> None:
    """Accept a new or empty folder, or one holding this same sweep (to resume it); refuse anything else.

    A sweep re-run with other scales or settings would leave folders that ``sweep.json`` no longer lists. A
    generation setting the recorded sweep lacks (it was written before the setting existed) ran with its default.

    Raises:
        `FileExistsError`: naming the folder, what differs and the fix.
    """
    output_dir = check_output_folder(output_dir, SWEEP, command="`side sweep`")
    marker = output_dir / SWEEP_CONFIG
    if marker.is_file():
        defaults = {f.name: f.default for f in fields(GenerationSettings) if f.default is not MISSING and f.name in config}
        recorded = {**defaults, **SWEEP_CONFIG_FILE.read(marker)}
        changed = sorted(k for k in set(recorded) | set(config) if recorded.get(k) != config.get(k))
        if changed:
            raise FileExistsError(
                f"{output_dir} holds a sweep with other settings ({', '.join(changed)}); re-run it with the same "
                "--guidance-scales and flags to resume, or choose another --output."
            )


def _with_scale(base: GenerationSettings, scale: float) -> GenerationSettings:
    return GenerationSettings.from_dict({**vars(base), "guidance_scale": scale})


def push(
    folder: str | os.PathLike,
    repo_id: str,
    command: str,
    token: str | None = None,
    private: bool = False,
    public: bool = False,
    include_training_matches: bool = False,
) -> str:
    """Upload a pipeline folder (with its README.md card) or a generation folder (as a data set with a card).

    Args:
        folder: a folder with ``model_index.json`` or ``side_lora.json`` (written by the training scripts) or
            ``generation.json``.
        repo_id: the Hub repository.
        command: the command line shown on a data set card.
        token: as in `huggingface_hub.create_repo`.
        private (`bool`): create a pipeline's model repo as private.
        public (`bool`): make an extraction data set, or a folder uploaded with its training-data matches, public;
            either is private otherwise, since it may reproduce private training data.
        include_training_matches (`bool`): upload a folder that holds training-data matches (``matches.parquet``,
            the figures of ``side evaluate``: generated images beside the training images they copy); refused
            otherwise (`diffusers_side.storage.outputs.training_data_files`).

    Returns:
        `str`: the repository id or the commit URL.

    Raises:
        `FileNotFoundError`: a pipeline folder without its card, or a folder of neither kind.
        `ValueError`: LoRA-SIDE adapters whose base model is a local folder, training-data matches not asked for, or a
            private canary key (``canary_key.json``) anywhere in the folder (always refused).
    """
    folder = Path(folder)
    keys = canary_key_files(folder) if folder.is_dir() else []
    if keys:
        raise ValueError(
            f"{folder} holds a private canary key ({keys[0].relative_to(folder)}): its triggers are what makes the canary "
            "audit work, and uploading them lets anyone extract the canaries. Move it out of the folder before pushing."
        )
    matches = training_data_files(folder) if folder.is_dir() else []
    if matches and not include_training_matches:
        shown = ", ".join(str(p.relative_to(folder)) for p in matches[:3]) + (" ..." if len(matches) > 3 else "")
        raise ValueError(
            f"{folder} holds training-data matches ({shown}): `side evaluate` pairs generated images with the training "
            "images they copy, and uploading them publishes those images. Move them out of the folder, or pass "
            "--include-training-matches (the repo is then private unless --public)."
        )
    lora = (folder / LORA_CONFIG_NAME).exists()
    if lora:
        check_shareable_base(read_lora_config(folder)["base_model"])
    if (folder / "model_index.json").exists() or lora:
        if not (folder / "README.md").exists():
            raise FileNotFoundError(f"{folder} has no README.md model card; write one (the training scripts do) before pushing.")
        if public and not matches:
            raise ValueError("--public applies to extraction data sets; a model repo is public unless you pass --private.")
        return push_folder(folder, repo_id, token=token, private=private or (bool(matches) and not public))
    if is_generation_folder(folder):
        settings = GenerationSettings.from_folder(folder)
        return push_extraction(load_image_dataset(folder), settings, repo_id, command, token=token, private=not public)
    raise FileNotFoundError(
        f"{folder} is neither a pipeline folder (model_index.json) nor an extraction folder (generation.json)."
    )
