"""The canary audit: query a fine-tuned text-to-image pipeline with each canary's trigger and with fresh controls.

For each of the N canaries of a key (`diffusers_side.audits.canary`), the pipeline generates ``k`` images from the
trigger alone; for each of M control triggers (same alphabet and length, never inserted, drawn with the audit's
seed) it generates ``k`` images too, and each control is *paired* with canary ``j mod N``. Every generation is
scored against its canary with the project's similarity (RMS L2, or Carlini et al.'s normalized L2 whose
normalizer is the mean distance to the generation's nearest canaries) and the best of its ``k`` decides the band
(`diffusers_side.evaluation.bands`). Reported per band: the canaries extracted (count, rate and a 95 % Wilson
interval) and the controls that land there (the false-positive rate under the null "the trigger was never seen"),
paired and, more conservatively, against the nearest canary of all. Query ``i`` (canaries first, then controls,
``k`` per trigger) samples with the seed `image_seed(seed, i, "extraction")`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..evaluation.bands import assign_bands, default_bands, parse_bands
from ..evaluation.intervals import wilson_interval
from ..generation.seeds import EXTRACTION, image_seed
from ..similarity.measures import CARLINI_NUM_NEIGHBORS, carlini_normalized_l2
from ..storage.outputs import CANARY_AUDIT, check_output_folder, write_manifest
from ..utils.atomic_io import atomic_path, write_json_atomic, write_text_atomic
from .canary import IMAGES_DIR, draw_controls, read_key

logger = logging.get_logger(__name__)

CANARY_SIMILARITIES = ("carlini", "l2")  # pixel similarities scored pairwise by `score_pairs`
REPORT_JSON, REPORT_MD, FIGURE = "report.json", "report.md", "figures/canary_pairs.png"


def load_text_to_image(spec: str, allow_pickle: bool = False):
    """A text-to-image pipeline (any diffusers pipeline whose call takes ``prompt`` and ``generator``, or a text
    LoRA-SIDE folder); `ValueError` for an unconditional one."""
    from ..models.lora import is_lora_folder
    from ..pipelines.loading import load_pipeline
    from ..pipelines.pipeline_side_lora_text import load_text_base
    from ..storage.sources import ModelSource

    source = ModelSource.parse(spec, what="--pipeline")
    try:
        pipe = None if is_lora_folder(source.resolved) else load_text_base(spec, use_safetensors=None if allow_pickle else True)
    except AttributeError:  # a class diffusers does not know: this plugin's SIDEPipeline
        pipe = None
    if pipe is None:
        pipe = _own_pipeline(source.resolved, allow_pickle) or load_pipeline(spec, allow_pickle=allow_pickle)
    parameters = inspect.signature(pipe.__call__).parameters
    if "prompt" not in parameters or "generator" not in parameters:
        raise ValueError(f"--pipeline {spec} is a {type(pipe).__name__}, which takes no prompt; a canary audit queries a text-to-image pipeline.")
    return pipe


def _own_pipeline(folder, allow_pickle: bool):
    """This plugin's `PixelTextPipeline` saved in ``folder`` (diffusers' loader looks its class up in diffusers), else None."""
    import json

    from ..pipelines.pipeline_pixel_text import PixelTextPipeline

    index = Path(folder) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == PixelTextPipeline.__name__:
        return PixelTextPipeline.from_pretrained(folder, use_safetensors=None if allow_pickle else True)
    return None


def query(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int, guidance_scale: float, batch_size: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` in [0, 1], one per prompt, image ``i`` sampled with generator seed ``seeds[i]``."""
    takes_batch_size = "batch_size" in inspect.signature(pipe.__call__).parameters
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="canary queries", unit="batch"):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        extra = {"batch_size": len(chunk)} if takes_batch_size else {}
        output = pipe(prompt=chunk, generator=generators, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, output_type="pt", **extra)
        images.append(output.images.float().cpu())
    return torch.cat(images)


def score_pairs(generations: torch.Tensor, canaries: torch.Tensor, paired: torch.Tensor, similarity: str) -> tuple[np.ndarray, np.ndarray]:
    """(score against the paired canary, best score against any canary) per generation; smaller = more similar.

    ``l2``: RMS L2 on [0, 1] pixels. ``carlini``: that distance over 0.5 x the mean distance to the generation's
    ``min(50, N)`` nearest canaries (Carlini et al.; the canaries are the reference set).
    """
    rows, reference = generations.flatten(1).double(), canaries.flatten(1).double()
    distances = torch.cdist(rows, reference) / rows.shape[1] ** 0.5  # RMS L2
    if similarity == "l2":
        scores = distances.numpy()
    else:
        neighbors = distances.topk(min(CARLINI_NUM_NEIGHBORS, len(reference)), dim=1, largest=False).values.numpy()
        scores = carlini_normalized_l2(distances.numpy(), neighbors)
    return scores[np.arange(len(rows)), paired.numpy()], scores.min(axis=1)


def _best_of_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    grouped = scores.reshape(-1, k)
    return grouped.min(axis=1), grouped.argmin(axis=1)


def _band_counts(scores: np.ndarray, bands) -> dict:
    assigned = assign_bands(scores, bands)
    counts = {band.name: wilson_interval(int((assigned == i).sum()), len(scores)) + [int((assigned == i).sum())] for i, band in enumerate(bands)}
    counts["any band"] = wilson_interval(int((assigned >= 0).sum()), len(scores)) + [int((assigned >= 0).sum())]
    return counts


def _score(generations, canary_images, key, num_controls: int, k: int, similarity: str, band_list) -> tuple[dict, np.ndarray]:
    """The report's numbers (canaries' queries first, ``k`` per trigger, then the controls'), and each canary's best of k."""
    num = len(key["triggers"])
    paired = torch.tensor([j % num for j in range(num + num_controls) for _ in range(k)])
    own, nearest = score_pairs(generations, canary_images, paired, similarity)
    canary_best, canary_which = _best_of_k(own[: num * k], k)
    control_best, _ = _best_of_k(own[num * k :], k)
    control_any, _ = _best_of_k(nearest[num * k :], k)
    report = {
        "similarity": similarity, "bands": [b.to_dict() for b in band_list], "num_canaries": num, "num_controls": num_controls,
        "columns": ["rate", "ci_low", "ci_high", "count"],
        "extracted": _band_counts(canary_best, band_list), "controls_paired": _band_counts(control_best, band_list),
        "controls_any_canary": _band_counts(control_any, band_list),
        "canary_scores": {str(cid): float(s) for cid, s in zip(key["canary_ids"], canary_best)},
        "control_scores": [float(s) for s in control_best],
    }
    return report, canary_which


def _figure(path: Path, canaries: torch.Tensor, best: torch.Tensor, limit: int = 16) -> None:
    """Rows of canary | its best generation (the first ``limit`` rows)."""
    from ..storage.data import tensor_to_pil

    left, right = tensor_to_pil(canaries[:limit]), tensor_to_pil(best[:limit])
    size = left[0].size[0]
    sheet = PIL.Image.new(left[0].mode, (2 * size + 4, len(left) * (size + 2)), 255 if left[0].mode == "L" else (255,) * 3)
    for row, (a, b) in enumerate(zip(left, right)):
        sheet.paste(a, (0, row * (size + 2)))
        sheet.paste(b, (size + 4, row * (size + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _markdown(report: dict) -> str:
    lines = [
        "# Canary audit (Extended SIDE)",
        "",
        f"Pipeline `{report['settings']['pipeline']}`, {report['num_canaries']} canaries, {report['num_controls']} controls "
        f"(fresh triggers never inserted), {report['settings']['images_per_trigger']} image(s) per trigger, similarity "
        f"`{report['similarity']}` (smaller = more similar; best of the images of each trigger).",
        "",
        "| band | canaries extracted | rate (95 % CI) | controls (paired) | control FP rate (95 % CI) | controls vs any canary |",
        "|---|---|---|---|---|---|",
    ]
    for name, (rate, low, high, count) in report["extracted"].items():
        c_rate, c_low, c_high, c_count = report["controls_paired"][name]
        any_rate, _, _, any_count = report["controls_any_canary"][name]
        lines.append(
            f"| {name} | {count} | {100 * rate:.1f} % ({100 * low:.1f}, {100 * high:.1f}) | {c_count} | "
            f"{100 * c_rate:.1f} % ({100 * c_low:.1f}, {100 * c_high:.1f}) | {any_count} ({100 * any_rate:.1f} %) |"
        )
    bands = ", ".join(f"{b['name']} [{b['low']:.4g}, {b['high']:.4g})" for b in report["bands"])
    lines += ["", f"Bands: {bands}. Figure: `{FIGURE}` (canary | its best generation, the 16 most similar pairs first).", ""]
    return "\n".join(lines)


def run_canary_audit(
    pipeline: str,
    canaries: str | os.PathLike,
    output: str | os.PathLike,
    num_controls: int | None = None,
    images_per_trigger: int = 1,
    similarity: str = "carlini",
    bands: str | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    batch_size: int = 16,
    seed: int = 0,
    allow_pickle: bool = False,
) -> dict:
    """
    Query ``pipeline`` with every canary trigger and ``num_controls`` fresh triggers; write report.json, report.md, a figure.

    Args:
        pipeline (`str`): the fine-tuned text-to-image pipeline (folder, Hub id, or text LoRA-SIDE folder).
        canaries (`str` or `os.PathLike`): the `side canary make` output (key + images).
        output (`str` or `os.PathLike`): new (or earlier canary audit) folder.
        num_controls (`int`, *optional*): M control triggers (default: as many as canaries).
        images_per_trigger (`int`): k images per trigger; a trigger's best one is scored.
        similarity (`str`): ``"carlini"`` (default) or ``"l2"``. bands (`str`, *optional*): ``NAME:LO:HI,...``.
        num_inference_steps (`int`), guidance_scale (`float`), batch_size (`int`): the pipeline call's settings.
        seed (`int`): seeds the control triggers and every query's sampling (stream "extraction").
        allow_pickle (`bool`): accept pickled `.bin` weights.

    Returns:
        `dict`: the report (also in ``output/report.json``); no trigger is written into it.

    Example:

    ```py
    >>> from diffusers_side.audits.canary_audit import run_canary_audit
    >>> report = run_canary_audit("my-finetuned-sd", "canaries", "canary-audit", images_per_trigger=4)
    >>> report["extracted"]["any band"][0], report["controls_paired"]["any band"][0]
    ```
    """
    if similarity not in CANARY_SIMILARITIES:
        raise ValueError(f"--similarity {similarity!r}: a canary audit scores pixels; use one of {CANARY_SIMILARITIES}.")
    band_list = parse_bands(bands) if bands else default_bands(similarity)
    from ..storage.sources import ModelSource

    folder = check_output_folder(output, CANARY_AUDIT, command="side canary audit")
    ModelSource.parse(pipeline, what="--pipeline")
    key = read_key(canaries)
    num = len(key["triggers"])
    num_controls = num if num_controls is None else num_controls
    if not isinstance(num_controls, int) or num_controls < 1 or not isinstance(images_per_trigger, int) or images_per_trigger < 1:
        raise ValueError(f"--num-controls {num_controls!r} and --images-per-trigger {images_per_trigger!r} must be positive integers.")
    if similarity == "carlini" and num < 2:
        raise ValueError("--similarity carlini normalizes by the nearest canaries and needs at least 2; use --similarity l2.")
    controls = draw_controls(key, num_controls, seed)
    pipe = load_text_to_image(pipeline, allow_pickle)
    from ..storage.data import images_to_tensor, tensor_to_pil

    settings = key["settings"]
    canary_images = images_to_tensor(
        [PIL.Image.open(Path(canaries) / IMAGES_DIR / name) for name in key["file_names"]], settings["resolution"], settings["channels"]
    )
    k = images_per_trigger
    prompts = [t for t in key["triggers"] + controls for _ in range(k)]
    seeds = [image_seed(seed, i, EXTRACTION) for i in range(len(prompts))]
    raw = query(pipe, prompts, seeds, num_inference_steps, guidance_scale, batch_size)
    generations = images_to_tensor(tensor_to_pil(raw), settings["resolution"], settings["channels"])
    report, canary_which = _score(generations, canary_images, key, num_controls, k, similarity, band_list)
    report["settings"] = {"pipeline": str(pipeline), "canaries": str(canaries), "num_controls": num_controls, "images_per_trigger": k,
                          "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed}
    best_images = generations[: num * k].reshape(num, k, *generations.shape[1:])[torch.arange(num), torch.from_numpy(canary_which)]
    order = torch.from_numpy(np.argsort([report["canary_scores"][str(c)] for c in key["canary_ids"]], kind="stable"))
    _figure(folder / FIGURE, canary_images[order], best_images[order])  # most similar first
    write_json_atomic(folder / REPORT_JSON, report)
    write_text_atomic(folder / REPORT_MD, _markdown(report))
    write_manifest(folder, CANARY_AUDIT, [REPORT_JSON, REPORT_MD, FIGURE])
    return report
