"""`side demo`: the whole SIDE audit of the embedded digits model, end to end, offline.

Stages (each one a library call the individual commands also use):

1. synthesize N_syn unguided samples from the target;
2. label them (embed with the target's own UNet, KMeans, cohesion filter, relabel);
3. train the time-dependent classifier (SIDE) and the time-independent one (Carlini Cond) with
   `diffusers_side.training.classifier.train_classifier` (the loop of ``training/train_classifier.py``);
   with a lambda sweep configured (the ``paper`` preset), choose SIDE's lambda on the selection seed, never on the
   reported one: by default from blind near-duplicate groups, no training image read (`workflows.demo_sweep`);
4. extract N_G candidates with every registered method (SIDE, Carlini UnCond, Carlini Cond, SIDE with exemplar guidance)
   at the same extraction-stream seeds (never the synthesis seeds), each ranked into a blind candidate list;
5. evaluate them all against the training subset and write ``report.md``, ``report.json`` and figures (the top blind
   candidates too), with each classifier's held-out accuracy per timestep quartile and the lambda sweep, if any.

Presets (`PRESETS`, ``side demo --preset``): ``demo`` (the defaults, minutes on 2 cores) and ``paper`` (the
paper's scale, hours; README "Full-scale preset"); `QUICK` is a smoke test.

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

from ..candidates.files import write_candidates
from ..candidates.ranking import MIN_GENERATIONS
from ..evaluation.evaluate import evaluate
from ..evaluation.report import write_report
from ..generation.engine import GenerationSettings, generate
from ..generation.preflight import check_target_and_reference
from ..labels.surrogate_labels import label_synthetic
from ..methods.base import AuditArtefacts
from ..methods.registry import extraction_method_names, get_method
from ..models.classifier_size import CLASSIFIER_SIZES
from ..pipelines.loading import load_pipeline
from ..storage.embedded import DEFAULT
from ..storage.outputs import DEMO, check_output_folder
from ..storage.sources import ModelSource
from ..training.arguments import CLASSIFIER_LAYERS
from ..training.classifier import classifier_training_args, train_classifier
from ..training.common import TRAIN_LOG_NAME
from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import DEMO_CONFIG, TRAIN_LOG
from .demo_sweep import AUDITOR, BLIND, SWEEP_DIRS, check_sweep_criterion, guidance_selection, run_demo_sweep, sweep_is_done
from .demo_sweep import select_guidance_scale as select_guidance_scale  # auditor-tuned; re-exported

logger = logging.get_logger(__name__)

TIMINGS_FILE = "timings.json"
CONFIG_FILE = "demo_config.json"
SWEEP_DIR = SWEEP_DIRS[AUDITOR]  # the auditor-tuned sweep's folder; the blind one's is SWEEP_DIRS[BLIND]
SWEPT_METHOD = "side"
CLASSIFIERS = {"classifier-side": False, "classifier-cond": True}  # folder -> time-independent


@dataclass
class DemoConfig:
    """The demo's settings. The defaults are the ``demo`` preset; `PAPER` is the paper's scale, `QUICK` a smoke test.

    Args:
        preset: the name of the preset these settings start from (recorded, so a resumed run keeps it).
        num_synthetic: N_syn, unguided samples used to build the surrogate labels.
        num_clusters: K of KMeans.
        cohesion: tau, or ``"auto"`` (Otsu's split of the cohesion values, see `surrogate_labels`).
        features: feature extractor for the labels (``"unet"``: the target's own encoder).
        classifier_steps: optimisation steps of each classifier; ``None``: ``classifier_epochs`` passes over
            the labelled set (less the held-out tenth).
        classifier_epochs: epochs when ``classifier_steps`` is ``None``.
        classifier_layers: a `RESNET_LAYOUTS` key, e.g. ``"resnet18"`` or ``"resnet34"`` (the paper's).
        classifier_size: ``"auto"``, ``"demo"`` or ``"paper"`` (`diffusers_side.models.classifier_size`): when set, it
            decides the layout and width instead of ``classifier_layers`` and ``classifier_base_channels``.
        classifier_batch_size, classifier_base_channels, classifier_learning_rate, classifier_weight_decay: AdamW
            training of both classifiers.
        num_images: N_G, candidates per extraction method (all methods share the same seeds).
        guidance_scale: lambda of every guided method (SIDE's unless swept); ``None``: each method's registered
            default (`ExtractionMethod.resolve_guidance_scale`: SIDE and Cond 1 as in the paper, SIDE-exemplar 10).
        sweep_guidance_scales: lambdas for SIDE tried at ``selection_seed`` with ``selection_num_images`` images
            each; SIDE is then extracted at the one ``sweep_criterion`` chooses. Empty: no sweep.
        sweep_criterion: ``"blind-groups"`` (default, attacker-side: most blind near-duplicate groups per generation,
            no training image read) or ``"auditor-tuned"`` (scored against ``reference``: an oracle step, labelled so
            in the report); `diffusers_side.workflows.demo_sweep`.
        selection_num_images, selection_seed: N_G per lambda and the seed of the sweep (never ``seed``, so the
            reported numbers are not those lambda was chosen on).
        num_inference_steps, scheduler: the sampler used for every generation, synthesis included. ``"ddpm"``
            (50-step ancestral sampling) by default, not the target's saved DDIM sampler: on both embedded
            targets every method copies several times more often under it (README "Study"), so the audit is
            more sensitive; ``None`` samples with the pipeline's own scheduler.
        batch_size: images per generation shard.
        seed: run seed of every stage (synthesis and extraction draw from disjoint seed streams of it).
    """

    preset: str = "demo"
    pipeline: str = DEFAULT
    reference: str = DEFAULT
    num_synthetic: int = 1000
    num_clusters: int = 100
    cohesion: float | str = "auto"
    features: str = "unet"
    classifier_steps: int | None = 600
    classifier_epochs: int = 20
    classifier_layers: str = "resnet18"
    classifier_size: str | None = None
    classifier_batch_size: int = 128
    classifier_base_channels: int = 16
    classifier_learning_rate: float = 1e-3
    classifier_weight_decay: float = 0.0
    num_images: int = 500
    guidance_scale: float | None = None
    sweep_guidance_scales: tuple[float, ...] = ()
    sweep_criterion: str = BLIND
    selection_num_images: int = 0
    selection_seed: int = 1
    num_inference_steps: int = 50
    scheduler: str | None = "ddpm"
    batch_size: int = 250
    seed: int = 0


QUICK = DemoConfig(
    preset="quick",
    num_synthetic=48,
    num_clusters=4,
    classifier_steps=8,
    classifier_batch_size=16,
    classifier_base_channels=8,
    num_images=12,
    num_inference_steps=4,
    batch_size=16,
)

# The paper's scale (README "Full-scale preset"): N_syn 10,000 and K 100 (peers' N_syn, the paper's K), classifiers
# trained 20 epochs (a peer's default; the paper states no epochs) with AdamW lr 1e-4 (the paper) and weight decay 1e-2
# (the peer's, torch's AdamW default), batch 64 (the peer's), the paper's lambda range sampled at {0, 1, 2, 5, 10, 20,
# 50} on 1,000 selection-seed images each and chosen attacker-side (blind near-duplicate groups), N_G 5,000 per method.
# The classifiers are sized by the rule of `diffusers_side.models.classifier_size` (``classifier_size="auto"``): for
# < 20,000 labelled images torchvision's ResNet-18 layout at width 16, not the paper's ResNet-34 at width 64 (5x the
# guided cost per image and 23x the training cost, for no measured gain; benchmarks README sections 7 and 10). ``classifier_size="paper"``
# (``--classifier-size paper``) restores the ResNet-34 (classifier_layers / classifier_base_channels below).
PAPER = DemoConfig(
    preset="paper",
    num_synthetic=10_000,
    num_clusters=100,
    classifier_steps=None,
    classifier_epochs=20,
    classifier_layers="resnet34",
    classifier_size="auto",
    classifier_batch_size=64,
    classifier_base_channels=64,
    classifier_learning_rate=1e-4,
    classifier_weight_decay=1e-2,
    num_images=5_000,
    sweep_guidance_scales=(0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0),
    selection_num_images=1_000,
    selection_seed=1,
)

PRESETS = {"demo": DemoConfig(), "paper": PAPER}


def resolve_config(preset: str | None = None, quick: bool = False, **overrides) -> DemoConfig:
    """The settings of a demo: a preset (``"demo"`` when none is named, `QUICK` with ``quick``), then ``overrides``.

    An explicit ``guidance_scale`` replaces the preset's lambda sweep unless ``sweep_guidance_scales`` is also given.

    Args:
        preset (`str`, *optional*): a key of `PRESETS`.
        quick (`bool`): start from `QUICK`; contradicts a named preset.
        overrides: any `DemoConfig` field.

    Returns:
        [`DemoConfig`]

    Raises:
        `ValueError`: an unknown preset, or ``quick`` with a preset, naming the fix.
    """
    if quick and preset is not None:
        raise ValueError(
            f"--quick and --preset {preset} contradict each other: --quick is a preset of its own (tiny N, a smoke test); "
            "drop one of them."
        )
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    base = QUICK if quick else PRESETS[preset or "demo"]
    if "guidance_scale" in overrides:
        overrides.setdefault("sweep_guidance_scales", ())
    return replace(base, **overrides)


StageCallback = Callable[[str, float, str], None]


class Demo:
    """Runs the stages of a demo into ``output_dir`` and records how long each took."""

    def __init__(self, output_dir: str | os.PathLike, config: DemoConfig, on_stage_done: StageCallback | None = None):
        self.output_dir = Path(output_dir)
        self.config = config
        self.on_stage_done = on_stage_done or (lambda stage, seconds, path: None)
        self.timings: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}  # process time of each stage (the budget unit of `side study`)
        self.selected_guidance_scale: float | None = None  # SIDE's lambda once the sweep has chosen it

    def path(self, name: str) -> Path:
        """The folder of stage ``name`` under the output directory."""
        return self.output_dir / name

    def stage(self, name: str, output: Path, run: Callable[[], object]) -> None:
        """Run one stage, record its time and report it to ``on_stage_done``."""
        started, cpu = time.perf_counter(), time.process_time()
        run()
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.cpu_seconds[name] = round(time.process_time() - cpu, 2)
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
        guidance_scale = record.resolve_guidance_scale(c.guidance_scale if record.guided else None)
        if method == SWEPT_METHOD and self.selected_guidance_scale is not None:
            guidance_scale = self.selected_guidance_scale
        return GenerationSettings(
            pipeline=c.pipeline, method=method, num_images=c.num_images, batch_size=c.batch_size, seed=c.seed,
            num_inference_steps=c.num_inference_steps, guidance_scale=guidance_scale, scheduler=c.scheduler,
            **record.audit_inputs(self.artefacts()),
        )

    def artefacts(self) -> AuditArtefacts:
        """Where the label and classifier stages write (what each method takes its inputs from)."""
        classifiers = {not time_independent: self.path(name) for name, time_independent in CLASSIFIERS.items()}
        return AuditArtefacts(labels=self.path("labels"), classifiers=classifiers)

    def sweep_settings(self) -> GenerationSettings:
        """SIDE's settings on the selection seed, at the sweep's N_G (`run_sweep` sets each lambda)."""
        c = self.config
        return replace(self.generation_settings(SWEPT_METHOD), seed=c.selection_seed, num_images=c.selection_num_images)

    def check(self) -> None:
        """Validate every stage's settings and the output folder before the first stage runs.

        Raises:
            `ValueError`: a bad setting, naming it. `FileNotFoundError`: a reference that does not exist.
            `FileExistsError`: the output holds something other than a demo with these settings.
        """
        c = self.config
        if c.classifier_layers not in CLASSIFIER_LAYERS:
            raise ValueError(f"classifier_layers {c.classifier_layers!r} is not one of {CLASSIFIER_LAYERS}.")
        if c.classifier_size is not None and c.classifier_size not in CLASSIFIER_SIZES:
            raise ValueError(f"classifier_size {c.classifier_size!r} is not one of {CLASSIFIER_SIZES}; pass one or None.")
        for method in ("synthetic", *extraction_method_names()):
            self.generation_settings(method).validate()
        check_sweep_criterion(c.sweep_criterion)
        if c.sweep_guidance_scales:
            if c.selection_seed == c.seed:
                raise ValueError(
                    f"The lambda sweep's selection seed {c.selection_seed} equals the run seed --seed {c.seed}: lambda would "
                    "be chosen on the reported images; pass another --seed."
                )
            if c.sweep_criterion == BLIND and c.selection_num_images < MIN_GENERATIONS:
                raise ValueError(
                    f"selection_num_images={c.selection_num_images}: the blind sweep ranks each lambda's generations among "
                    f"themselves and needs at least {MIN_GENERATIONS}; pass more (side demo --selection-num-images N, e.g. "
                    "1000 as --preset paper)."
                )
            for scale in c.sweep_guidance_scales:
                replace(self.sweep_settings(), guidance_scale=scale).validate()
        ModelSource.parse(self.config.pipeline, what="--pipeline")
        check_target_and_reference(  # from small files, before any stage: the evaluation compares pixels
            c.pipeline, c.reference, c.num_inference_steps, steps=("the preset's sampling steps", "pass --pipeline with a longer "
            "schedule"), shapes="pass --reference with the training set of --pipeline, or --pipeline with a model trained on --reference",
        )
        check_output_folder(self.output_dir, DEMO, command="`side demo`")
        config_file = self.path(CONFIG_FILE)
        if config_file.is_file():
            # a field added after a demo was recorded has the default value, the behaviour of that demo's version
            recorded = {**asdict(DemoConfig()), "sweep_criterion": AUDITOR, **DEMO_CONFIG.read(config_file)}
            wanted = json.loads(json.dumps(asdict(self.config)))
            if recorded["preset"] != wanted["preset"]:
                raise FileExistsError(
                    f"{self.output_dir} holds a demo of preset {recorded['preset']!r}, not {wanted['preset']!r}; re-run it "
                    "with the same preset and flags to resume, or choose another --output."
                )
            changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
            if changed:
                raise FileExistsError(
                    f"{self.output_dir} holds a demo with other settings ({', '.join(changed)}); re-run it with the same "
                    "flags to resume, or choose another --output."
                )

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
        length = {"num_epochs": c.classifier_epochs} if c.classifier_steps is None else {"max_train_steps": c.classifier_steps}
        size = {"classifier_layers": c.classifier_layers, "base_channels": c.classifier_base_channels}
        if c.classifier_size is not None:
            size = {"classifier_size": c.classifier_size}
        args = classifier_training_args(
            pretrained_model_name_or_path=c.pipeline,
            train_data_dir=str(self.path("labels")),
            output_dir=str(self.path(name)),
            **length,
            **size,
            train_batch_size=c.classifier_batch_size,
            learning_rate=c.classifier_learning_rate,
            adam_weight_decay=c.classifier_weight_decay,
            seed=c.seed,
            resume_from_checkpoint="latest",
            time_independent=time_independent,
        )
        train_classifier(args)

    def sweep(self) -> None:
        """Stage 3b: SIDE at every lambda of the sweep on the selection seed, scored by ``sweep_criterion``."""
        c = self.config
        run_demo_sweep(c.sweep_criterion, self.sweep_settings(), c.sweep_guidance_scales, self.sweep_dir(), c.reference,
                       labels=self.path("labels"))

    def sweep_dir(self) -> Path:
        """The sweep's folder (one per criterion, so a resumed demo never mixes them)."""
        return self.path(SWEEP_DIRS[self.config.sweep_criterion])

    def guidance_selection(self) -> dict:
        """The sweep's curve, the chosen lambda and the criterion that chose it (`demo_sweep.guidance_selection`)."""
        c = self.config
        return guidance_selection(c.sweep_criterion, self.sweep_dir(), SWEPT_METHOD, c.selection_seed, c.selection_num_images)

    def extract(self, method: str) -> None:
        """Stage 4: N_G candidates with ``method``, with the classifier its record asks for."""
        c = self.config
        settings = self.generation_settings(method)
        pipe = load_pipeline(c.pipeline, c.scheduler, settings.classifier)
        generate(pipe, self.path(f"extract-{method}"), settings)
        if settings.num_images >= MIN_GENERATIONS:
            write_candidates(self.path(f"extract-{method}"))

    def classifier_accuracy(self) -> dict:
        """Each classifier's accuracy per timestep quartile on its held-out images (from its ``train_log.json``)."""
        accuracy = {}
        for name in CLASSIFIERS:
            log = TRAIN_LOG.read(self.path(name) / TRAIN_LOG_NAME)
            num_labels = json.loads((self.path(name) / "classifier" / "config.json").read_text())["num_classes"]
            accuracy[name] = {
                "global_step": log["global_step"], "num_labels": num_labels, "evaluated_on": log["evaluated_on"],
                **log["evaluation"],
            }
        return accuracy

    def evaluate(self) -> dict:
        """Stage 5: score every extraction method against the reference and write the report."""
        generated = [self.path(f"extract-{method}") for method in demo_methods()]
        report = evaluate(generated, self.config.reference, self.output_dir, similarity="carlini", output_kind=DEMO)
        report["classifiers"] = self.classifier_accuracy()
        if self.config.sweep_guidance_scales:
            report["guidance_selection"] = self.guidance_selection()
        write_report(report, self.output_dir)
        return report

    def run(self) -> dict:
        """Run every stage not yet done and return the report (also written to ``report.json``)."""
        self.check()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(CONFIG_FILE), asdict(self.config))
        self.stage("synthesize", self.path("synthetic"), self.synthesize)
        if not (self.path("labels") / "surrogate_labels.json").exists():
            self.stage("label", self.path("labels"), self.label)
        for name, time_independent in CLASSIFIERS.items():
            if not (self.path(name) / "model_index.json").exists():
                self.stage(f"train {name}", self.path(name), lambda: self.train_classifier(name, time_independent))
        if self.config.sweep_guidance_scales:
            if not sweep_is_done(self.config.sweep_criterion, self.sweep_dir()):
                self.stage("sweep side", self.sweep_dir(), self.sweep)
            self.selected_guidance_scale = self.guidance_selection()["selected"]
        for method in demo_methods():
            self.stage(f"extract {method}", self.path(f"extract-{method}"), lambda: self.extract(method))
        report = {}
        self.stage("evaluate", self.output_dir, lambda: report.update(self.evaluate()))
        self.timings["total"] = round(sum(self.timings.values()), 2)
        write_json_atomic(self.path(TIMINGS_FILE), {**self.timings, "cpu_seconds": self.cpu_seconds})
        return report


def demo_methods() -> list[str]:
    """The extraction methods the demo compares: every registered one it has the inputs for (`ExtractionMethod.in_demo`;
    not the LoRA branch, whose fine-tuning stage the demo does not run: README "LoRA-SIDE" has its commands)."""
    return [name for name in extraction_method_names() if get_method(name).in_demo]


def run_demo(
    output_dir: str | os.PathLike = "side-demo",
    quick: bool = False,
    on_stage_done: StageCallback | None = None,
    preset: str | None = None,
    **overrides,
) -> dict:
    """
    Run the SIDE audit of the embedded model (or of ``pipeline=...``) end to end.

    Args:
        output_dir: where every stage writes (re-running resumes, with the same preset and overrides only).
        quick (`bool`): a seconds-long smoke run with tiny N (for tests), not a measurement.
        on_stage_done (`Callable`, *optional*): called as ``(stage, seconds, output_path)`` after each stage.
        preset (`str`, *optional*): ``"demo"`` (default) or ``"paper"`` (`PRESETS`; see `resolve_config`).
        overrides: any `DemoConfig` field.

    Returns:
        `dict`: the evaluation report (see `diffusers_side.evaluation.evaluate.evaluate`).

    Example:

    ```py
    >>> from diffusers_side.workflows.demo import run_demo
    >>> report = run_demo("side-demo")
    >>> report["methods"]["side"]["ams"]
    >>> report = run_demo("side-paper", preset="paper", num_images=2000)  # the paper's scale, hours on a CPU
    >>> report["guidance_selection"]["selected"], report["classifiers"]["classifier-side"]["q3"]["accuracy"]
    ```
    """
    config = resolve_config(preset, quick, **overrides)
    return Demo(output_dir, config, on_stage_done).run()

