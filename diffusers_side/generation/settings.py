"""`GenerationSettings`: everything that determines the images of a generation run, and the output folder checks.

The folder format itself (``generation.json`` + ``shards/``) is defined in `diffusers_side.storage.generation_folder`;
this module gives the settings their meaning (which method, which options it allows) and decides whether an output
folder may be written or resumed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..guidance.targets import check_target_selection
from ..methods.registry import METHODS, get_method
from ..storage.generation_folder import SETTINGS_FILE, SHARDS_DIR, is_generation_folder, read_settings, shard_files
from ..storage.outputs import GENERATION, check_output_folder
from ..storage.sources import canonical_source
from ..utils.arg_types import MAX_IMAGES
from ..utils.atomic_io import write_json_atomic
from .seeds import SHARED, check_disjoint_seeds, check_seed_stream, run_seeds, stream_for_method


@dataclass
class GenerationSettings:
    """Everything that determines the images of a run (written to ``generation.json``).

    ``pipeline`` and ``classifier`` are stored as absolute paths (embedded names such as ``"default"`` and Hub repo ids as
    given), so a later command finds the same model from any working directory. The fingerprints cover everything
    a resume depends on besides these settings: ``model_fingerprint`` and ``classifier_fingerprint`` (sha256 of the
    weights, see `diffusers_side.pipelines.loading.weights_fingerprint`), ``config_fingerprint`` (of the configs of
    every sampling component: scheduler, UNet, classifier) and ``exemplars_fingerprint`` (of the exemplar set and
    the target distribution drawn from it). `diffusers_side.generation.engine.generate` fills them in; they are
    checked when a run is resumed (and the weights when it is labelled).
    The variant fields (``exemplars``, ``target_selection``, ``guidance_window``, ``guidance_space``) default to
    the paper's form, which is what a folder written before they existed was generated with; which of them a
    method takes, and its lambda, the method decides (`ExtractionMethod.validate`). ``seed_stream`` follows
    the method (``"synthesis"`` for ``synthetic``, ``"extraction"`` otherwise; see `diffusers_side.generation.seeds`),
    so synthesis and extraction never share an image seed; a folder written before it existed reads as ``"shared"``.
    """

    pipeline: str
    method: str
    num_images: int
    batch_size: int = 64
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 0.0
    scheduler: str | None = None
    classifier: str | None = None
    model_fingerprint: str | None = None
    classifier_fingerprint: str | None = None
    exemplars: str | None = None
    target_selection: str = "uniform"
    guidance_window: list[float] | None = None
    guidance_space: str = "xt"
    seed_stream: str | None = None
    config_fingerprint: str | None = None
    exemplars_fingerprint: str | None = None
    restart_strength: float = 0.0

    def __post_init__(self):
        self.seed_stream = stream_for_method(self.method) if self.seed_stream is None else self.seed_stream
        self.pipeline = canonical_source(self.pipeline)
        self.classifier = None if self.classifier is None else canonical_source(self.classifier)
        self.exemplars = None if self.exemplars is None else str(Path(self.exemplars).resolve())
        self.guidance_window = None if self.guidance_window is None else [float(t) for t in self.guidance_window]

    @classmethod
    def from_dict(cls, payload: dict, source: str | os.PathLike | None = None) -> "GenerationSettings":
        """Settings from a ``generation.json`` payload; the empty ``extra`` of older folders is dropped.

        Args:
            payload (`dict`): the record.
            source: the file it was read from, named in errors.

        Raises:
            `ValueError`: the record names no pipeline (written by hand or by another tool), naming ``source``.
        """
        if not payload.get("pipeline"):
            where = f"{source} " if source is not None else "The generation record "
            raise ValueError(f"{where}records no pipeline, so the settings these images were generated with are unknown; "
                             "regenerate them with `side extract` (or add the pipeline that made them to the record).")
        known = {f.name for f in fields(cls)}
        return cls(**{"seed_stream": SHARED, **{k: v for k, v in payload.items() if k in known}})

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "GenerationSettings":
        """The settings recorded in a generation folder's ``generation.json`` (`from_dict`, naming the file)."""
        return cls.from_dict(read_settings(folder), Path(folder) / SETTINGS_FILE)

    def validate(self, num_processes: int = 1) -> None:
        """Raise `ValueError` naming the setting and the fix, before any image is generated."""
        method = get_method(self.method)
        if self.num_images < 1 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise ValueError(
                f"num_images={self.num_images}, batch_size={self.batch_size} and num_inference_steps="
                f"{self.num_inference_steps} must all be positive."
            )
        if self.num_images > MAX_IMAGES:
            raise ValueError(f"num_images={self.num_images:,} is more than {MAX_IMAGES:,}; split a larger audit into runs.")
        if self.num_images < num_processes:
            raise ValueError(
                f"num_images={self.num_images} is smaller than the {num_processes} processes launched; "
                "generate at least one image per process or launch fewer processes."
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0.")
        check_seed_stream(self.method, self.seed_stream)
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale={self.guidance_scale} must be a finite number >= 0.")
        check_target_selection(self.target_selection)
        if self.exemplars is not None and Path(self.exemplars, "dataset_info.json").is_file():
            from ..storage.data import load_saved_dataset

            exemplars = load_saved_dataset(self.exemplars)
            if "seed" in exemplars.column_names:
                check_disjoint_seeds(
                    run_seeds(self.seed, self.num_images, self.seed_stream), exemplars["seed"],
                    f"the exemplars {self.exemplars} (labelled from a run with these seeds)",
                    "Label a `side synthesize` set (its own seed stream) or extract with another --seed.",
                )
        from ..pipelines.core import check_restart_strength

        check_restart_strength(self.restart_strength, self.num_inference_steps)
        window = self.guidance_window
        if window is not None and (len(window) != 2 or not 0 <= window[0] <= window[1]):
            raise ValueError(f"guidance_window={window!r} must be [t_min, t_max] with 0 <= t_min <= t_max.")
        method.validate(self, METHODS.values())

    @property
    def steps_per_image(self) -> int:
        """Denoising steps (UNet forward passes) per image: the chain and its restart (`restart_strength`)."""
        from ..pipelines.core import restart_steps

        return self.num_inference_steps + restart_steps(self.num_inference_steps, self.restart_strength)

    @property
    def num_shards(self) -> int:
        """Shards of ``batch_size`` images in the run."""
        return math.ceil(self.num_images / self.batch_size)


# What each fingerprint covers, for the message when it changed between a killed run and its resume.
FINGERPRINTS = {
    "model_fingerprint": "the UNet's weights",
    "classifier_fingerprint": "the classifier's weights",
    "config_fingerprint": "the configuration (scheduler_config.json, or a component's config.json)",
    "exemplars_fingerprint": "what steers it (the target distribution, the exemplar set of --exemplars)",
}


def check_output_dir(output_dir: str | os.PathLike, settings: GenerationSettings) -> None:
    """Refuse an output that is a file, a folder holding something else, or a run with other settings.

    Cheap (reads ``generation.json`` only): call it before loading the model. The fingerprints are compared only
    when ``settings`` has them (they are known once the model is loaded). A run that has not finished a single
    shard holds nothing to lose: any settings may take it over (so a run refused at its first step can be
    corrected and re-run into the same folder).

    Raises:
        `FileExistsError`: naming the output and the fix. `OSError`: the output cannot be written.
    """
    output_dir = check_output_folder(output_dir, GENERATION)
    if not is_generation_folder(output_dir) or not shard_files(output_dir):
        return
    raw = read_settings(output_dir)
    if any(k not in raw for k in FINGERPRINTS) or "pipeline" not in raw:
        raise FileExistsError(
            f"{output_dir} was written by an older diffusers-side that did not record every fingerprint a resume "
            "depends on, so resuming it could mix images of two models or samplers; choose another --output (or delete "
            "the folder) and generate again."
        )
    recorded, wanted = asdict(GenerationSettings.from_dict(raw)), asdict(settings)
    changed = sorted(
        k for k in set(recorded) | set(wanted)
        if recorded.get(k) != wanted.get(k) and not (k in FINGERPRINTS and wanted.get(k) is None)
    )
    changed_fingerprints = [FINGERPRINTS[k] for k in changed if k in FINGERPRINTS]
    if changed_fingerprints:
        raise FileExistsError(
            f"Since the run in {output_dir} started, {' and '.join(changed_fingerprints)} of {settings.pipeline} changed "
            f"(fingerprints differ from those in {SETTINGS_FILE}): its shards come from the old model. Restore it to "
            "resume, or choose another --output."
        )
    if "seed_stream" in changed and recorded["seed_stream"] == SHARED:
        raise FileExistsError(
            f"{output_dir} was written before synthesis and extraction had their own image seeds (its seeds are shared "
            "by both roles), so it is not resumed; choose another --output (or delete the folder) and generate again."
        )
    if changed:
        raise FileExistsError(
            f"{output_dir} holds a different run (settings differ in {changed}); resume it with the same "
            "arguments, or choose another --output."
        )


def prepare_output_dir(output_dir: str | os.PathLike, settings: GenerationSettings) -> None:
    """Create ``output_dir`` for `settings`, or check that it holds the same run (to resume it)."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir, settings)
    if is_generation_folder(output_dir) and shard_files(output_dir):
        return
    (output_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / SETTINGS_FILE, asdict(settings))
