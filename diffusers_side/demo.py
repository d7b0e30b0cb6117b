"""`side demo`: the whole SIDE audit of the embedded digits model, end to end, offline.

Stages (each one a library call the individual commands also use):

1. synthesize N_syn unguided samples from the target;
2. label them (embed with the target's own UNet, KMeans, cohesion filter, relabel);
3. train the time-dependent classifier (SIDE) and the time-independent one (Carlini Cond) with
   `diffusers_side.training.classifier.train_classifier` (the loop of ``training/train_classifier.py``);
4. extract N_G candidates with every registered method (SIDE, Carlini UnCond, Carlini Cond, SIDE with exemplar guidance) at the same seeds;
5. evaluate them all against the training subset and write ``report.md``, ``report.json`` and figures.

Every stage writes into its own folder under the output directory and is skipped when its result is
already there, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from diffusers.utils import logging

from .atomic_io import write_json_atomic
from .data import check_image_source
from .default_model import DEFAULT, check_model_source
from .evaluation import evaluate
from .generation import GenerationSettings, generate
from .loading import load_pipeline
from .methods import extraction_method_names, get_method
from .surrogate_labels import label_synthetic
from .training.classifier import classifier_training_args, train_classifier

logger = logging.get_logger(__name__)

TIMINGS_FILE = "timings.json"
CONFIG_FILE = "demo_config.json"


@dataclass
class DemoConfig:
    """The demo's settings. The defaults are the documented full run; `QUICK` is a smoke test.

    Args:
        num_synthetic: N_syn, unguided samples used to build the surrogate labels.
        num_clusters: K of KMeans.
        cohesion: tau, or ``"auto"`` (Otsu's split of the cohesion values, see `surrogate_labels`).
        features: feature extractor for the labels (``"unet"``: the target's own encoder).
        classifier_steps, classifier_batch_size, classifier_base_channels, classifier_learning_rate: classifier training.
        num_images: N_G, candidates per extraction method (all methods share the same seeds).
        guidance_scale: lambda for SIDE and Carlini Cond.
        num_inference_steps, scheduler: the sampler used for every generation.
        batch_size: images per generation shard.
        seed: run seed of every stage.
    """

    pipeline: str = DEFAULT
    reference: str = DEFAULT
    num_synthetic: int = 1000
    num_clusters: int = 100
    cohesion: float | str = "auto"
    features: str = "unet"
    classifier_steps: int = 600
    classifier_batch_size: int = 128
    classifier_base_channels: int = 16
    classifier_learning_rate: float = 1e-3
    num_images: int = 500
    guidance_scale: float = 1.0
    num_inference_steps: int = 50
    scheduler: str | None = None
    batch_size: int = 250
    seed: int = 0


QUICK = DemoConfig(
    num_synthetic=48,
    num_clusters=4,
    classifier_steps=8,
    classifier_batch_size=16,
    classifier_base_channels=8,
    num_images=12,
    num_inference_steps=4,
    batch_size=16,
)


StageCallback = Callable[[str, float, str], None]


class Demo:
    """Runs the stages of a demo into ``output_dir`` and records how long each took."""

    def __init__(self, output_dir: str | os.PathLike, config: DemoConfig, on_stage_done: StageCallback | None = None):
        self.output_dir = Path(output_dir)
        self.config = config
        self.on_stage_done = on_stage_done or (lambda stage, seconds, path: None)
        self.timings: dict[str, float] = {}

    def path(self, name: str) -> Path:
        """The folder of stage ``name`` under the output directory."""
        return self.output_dir / name

    def stage(self, name: str, output: Path, run: Callable[[], object]) -> None:
        """Run one stage, record its time and report it to ``on_stage_done``."""
        started = time.perf_counter()
        run()
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.on_stage_done(name, self.timings[name], str(output))

    def generation_settings(self, method: str) -> GenerationSettings:
        """The settings of the synthetic set (``method="synthetic"``) or of one extraction method."""
        c = self.config
        if method == "synthetic":
            return GenerationSettings(
                pipeline=c.pipeline, method="synthetic", num_images=c.num_synthetic, batch_size=c.batch_size,
                seed=c.seed, num_inference_steps=c.num_inference_steps, scheduler=c.scheduler,
            )
        record = get_method(method)
        classifier = None
        if record.needs_classifier:
            classifier = self.path("classifier-side" if record.time_dependent else "classifier-cond")
        return GenerationSettings(
            pipeline=c.pipeline, method=method, num_images=c.num_images, batch_size=c.batch_size, seed=c.seed,
            num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale if record.guided else 0.0,
            scheduler=c.scheduler, classifier=str(classifier) if classifier else None,
            exemplars=str(self.path("labels")) if record.needs_exemplars else None,
        )

    def check(self) -> None:
        """Validate every stage's settings and the output folder before the first stage runs.

        Raises:
            `ValueError`: a bad setting, naming it. `FileNotFoundError`: a reference that does not exist.
            `FileExistsError`: the output holds something other than a demo with these settings.
        """
        for method in ("synthetic", *extraction_method_names()):
            self.generation_settings(method).validate()
        check_image_source(self.config.reference)
        check_model_source(self.config.pipeline, "--pipeline")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise FileExistsError(f"--output {self.output_dir} is a file; choose a folder.")
        config_file = self.path(CONFIG_FILE)
        if config_file.is_file():
            recorded, wanted = json.loads(config_file.read_text()), json.loads(json.dumps(asdict(self.config)))
            changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
            if changed:
                raise FileExistsError(
                    f"{self.output_dir} holds a demo with other settings ({', '.join(changed)}); re-run it with the same "
                    "flags to resume, or choose another --output."
                )
        elif self.output_dir.is_dir() and any(self.output_dir.iterdir()):
            raise FileExistsError(f"{self.output_dir} is not empty and holds no demo; choose another --output.")

    def synthesize(self) -> None:
        """Stage 1: N_syn unguided samples of the target."""
        c = self.config
        generate(load_pipeline(c.pipeline, c.scheduler), self.path("synthetic"), self.generation_settings("synthetic"))

    def label(self) -> None:
        """Stage 2: surrogate labels from the synthetic samples."""
        c = self.config
        label_synthetic(
            self.path("synthetic"), self.path("labels"), num_clusters=c.num_clusters, cohesion=c.cohesion,
            features=c.features, seed=c.seed,
        )

    def train_classifier(self, name: str, time_independent: bool) -> None:
        """Stage 3: train one classifier (time-dependent for SIDE, time-independent for Cond) into ``name``."""
        c = self.config
        args = classifier_training_args(
            pretrained_model_name_or_path=c.pipeline,
            train_data_dir=str(self.path("labels")),
            output_dir=str(self.path(name)),
            max_train_steps=c.classifier_steps,
            train_batch_size=c.classifier_batch_size,
            base_channels=c.classifier_base_channels,
            learning_rate=c.classifier_learning_rate,
            seed=c.seed,
            resume_from_checkpoint="latest",
            time_independent=time_independent,
        )
        train_classifier(args)

    def extract(self, method: str) -> None:
        """Stage 4: N_G candidates with ``method``, with the classifier its record asks for."""
        c = self.config
        settings = self.generation_settings(method)
        pipe = load_pipeline(c.pipeline, c.scheduler, settings.classifier)
        generate(pipe, self.path(f"extract-{method}"), settings)

    def evaluate(self) -> dict:
        """Stage 5: score every extraction method against the reference and write the report."""
        generated = [self.path(f"extract-{method}") for method in demo_methods()]
        return evaluate(generated, self.config.reference, self.output_dir, similarity="carlini")

    def run(self) -> dict:
        """Run every stage not yet done and return the report (also written to ``report.json``)."""
        self.check()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(CONFIG_FILE), asdict(self.config))
        self.stage("synthesize", self.path("synthetic"), self.synthesize)
        if not (self.path("labels") / "surrogate_labels.json").exists():
            self.stage("label", self.path("labels"), self.label)
        for name, time_independent in (("classifier-side", False), ("classifier-cond", True)):
            if not (self.path(name) / "model_index.json").exists():
                self.stage(f"train {name}", self.path(name), lambda: self.train_classifier(name, time_independent))
        for method in demo_methods():
            self.stage(f"extract {method}", self.path(f"extract-{method}"), lambda: self.extract(method))
        report = {}
        self.stage("evaluate", self.output_dir, lambda: report.update(self.evaluate()))
        self.timings["total"] = round(sum(self.timings.values()), 2)
        write_json_atomic(self.path(TIMINGS_FILE), self.timings)
        return report


def demo_methods() -> list[str]:
    """The extraction methods the demo compares: every registered one except the LoRA branch, whose fine-tuning
    stage the demo does not run (README, "LoRA-SIDE", has its commands and numbers)."""
    return [name for name in extraction_method_names() if not get_method(name).needs_lora]


def run_demo(
    output_dir: str | os.PathLike = "side-demo",
    quick: bool = False,
    on_stage_done: StageCallback | None = None,
    **overrides,
) -> dict:
    """
    Run the SIDE audit of the embedded model (or of ``pipeline=...``) end to end.

    Args:
        output_dir: where every stage writes (re-running resumes).
        quick (`bool`): a seconds-long smoke run with tiny N (for tests), not a measurement.
        on_stage_done (`Callable`, *optional*): called as ``(stage, seconds, output_path)`` after each stage.
        overrides: any `DemoConfig` field.

    Returns:
        `dict`: the evaluation report (see `diffusers_side.evaluation.evaluate`).

    Example:

    ```py
    >>> from diffusers_side.demo import run_demo
    >>> report = run_demo("side-demo")
    >>> report["methods"]["side"]["ams"]
    ```
    """
    config = replace(QUICK if quick else DemoConfig(), **overrides)
    return Demo(output_dir, config, on_stage_done).run()

