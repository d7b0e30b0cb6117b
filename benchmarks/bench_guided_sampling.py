"""Benchmark 1: the cost of SIDE's classifier guidance against plain `DDIMPipeline` sampling.

Both pipelines share one UNet, one DDIM noise schedule, the number of steps and the batch. In one run,
with alternating rounds, it times:

- ``ddim``: ``DDIMPipeline(unet, scheduler)``, the unguided reference;
- ``side_unguided``: ``SIDEPipeline`` with ``guidance_scale=0`` (must equal ``ddim``, checked);
- ``side_guided``: ``SIDEPipeline`` with ``guidance_scale=1`` and fixed targets;
- ``unet_forwards``: one UNet forward pass on the batch per step (no gradient);
- ``classifier_grads``: one classifier forward + backward w.r.t. the input only per step (frozen classifier).

Guidance adds one classifier forward+backward per UNet forward, so guided sampling cannot cost less
than ``bound = 1 + classifier_grads / unet_forwards`` times unguided sampling. The goal is
``side_guided / (ddim * bound) <= 1.15``: SIDE adds at most 15 % on top of that floor. Each ratio is
taken within a round (its measurements ran back to back) and the median over rounds is reported, on
process CPU time for single-threaded CPU runs (wall time otherwise). ``--dtype bf16|fp16`` runs under
``torch.autocast`` with fp32 weights.

Configurations:

- ``digits``: the embedded model (``diffusers_side/default_model`` when present, else the same
  architecture with random weights: 16x16 grayscale UNet, 32/64/64 channels) and a
  ``TimeDependentClassifier`` with base 16 and 20 classes.
- ``rgb64``: a 64x64 RGB UNet (64/128/128/256 channels, self-attention at 16x16) and a ResNet-18
  classifier with base 32.

Weights are random unless the embedded model is present; that does not change the cost.

Usage::

    nice -n 19 python benchmarks/bench_guided_sampling.py            # both configurations, CPU
    python benchmarks/bench_guided_sampling.py --quick               # smoke run
    python benchmarks/bench_guided_sampling.py --device cuda --dtype bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    machine_info,
    machine_line,
    markdown_table,
    measure_peak_rss,
    ratio_clock,
    report_child_result,
    run_child,
    time_interleaved,
    write_results,
)
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from diffusers_side.models.classifier import TimeDependentClassifier
from diffusers_side.pipelines.pipeline_side import SIDEPipeline
from diffusers_side.storage.embedded import DEFAULT_PIPELINE_DIR

GOAL = 1.15
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_CLASSES = 20
# Per configuration: (batch size, inference steps) for the full and the --quick run.
SETTINGS = {"digits": {"full": (32, 20), "quick": (8, 5)}, "rgb64": {"full": (4, 10), "quick": (2, 3)}}
VARIANTS = ("ddim", "side_unguided", "side_guided")
# Peak memory is measured for these (SIDE unguided runs the same tensors as DDIM).
MEMORY_VARIANTS = ("ddim", "side_guided")


def digits_models() -> tuple[UNet2DModel, TimeDependentClassifier, dict, str]:
    """The embedded model (or its architecture with random weights) and a base-16 classifier."""
    if (DEFAULT_PIPELINE_DIR / "model_index.json").exists():
        from diffusers_side.pipelines.loading import load_pipeline

        pipe = load_pipeline("default")
        classifier = pipe.classifier or TimeDependentClassifier(
            in_channels=1, sample_size=16, base_channels=16, num_classes=NUM_CLASSES
        )
        return pipe.unet, classifier, dict(pipe.scheduler.config), "embedded default model"
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, base_channels=16, num_classes=NUM_CLASSES)
    return unet, classifier, {}, "embedded architecture, random weights"


def rgb64_models() -> tuple[UNet2DModel, TimeDependentClassifier, dict, str]:
    """A 64x64 RGB UNet with one attention level and a ResNet-18 classifier (base 32)."""
    unet = UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128, 128, 256),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    classifier = TimeDependentClassifier(
        in_channels=3, sample_size=64, base_channels=32, layers="resnet18", num_classes=NUM_CLASSES
    )
    return unet, classifier, {}, "random weights"


MODELS = {"digits": digits_models, "rgb64": rgb64_models}


class Bench:
    """The models, pipelines and inputs of one configuration, and one callable per measurement."""

    def __init__(self, config: str, args: argparse.Namespace):
        self.device, self.dtype = args.device, DTYPES[args.dtype]
        self.batch_size, self.steps = args.batch_size, args.steps
        unet, classifier, scheduler_config, self.source = MODELS[config]()
        scheduler = DDIMScheduler.from_config(scheduler_config) if scheduler_config else DDIMScheduler()
        self.unet = self._prepare(unet, args)
        self.classifier = self._prepare(classifier, args)
        self.ddim = DDIMPipeline(self.unet, scheduler)
        self.side = SIDEPipeline(self.unet, DDIMScheduler.from_config(scheduler.config), self.classifier)
        for pipe in (self.ddim, self.side):
            pipe.set_progress_bar_config(disable=True)
        size = self.unet.config.sample_size
        self.shape = (self.batch_size, self.unet.config.in_channels, size, size)
        self.targets = torch.arange(self.batch_size, device=self.device) % self.classifier.config.num_classes
        generator = torch.Generator(self.device).manual_seed(0)
        self.noisy = torch.randn(self.shape, generator=generator, device=self.device)
        self.timestep = torch.tensor(500, device=self.device)

    def _prepare(self, model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
        model = model.to(self.device).eval().requires_grad_(False)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.compile:
            model.compile()
        return model

    def precision(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to bf16/fp16 (weights stay fp32), nothing for fp32.

        Autocast rather than casting the weights: with bf16 weights the samples are bf16, and both
        `DDIMPipeline` and `SIDEPipeline` fail converting them to numpy (``Got unsupported ScalarType BFloat16``).
        """
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.dtype)

    def in_precision(self, call):
        def run():
            with self.precision():
                return call()

        return run

    def generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(0)

    def ddim_sample(self) -> np.ndarray:
        return self.ddim(
            batch_size=self.batch_size, generator=self.generator(), num_inference_steps=self.steps, output_type="np"
        ).images

    def side_sample(self, guidance_scale: float) -> np.ndarray:
        return self.side(
            batch_size=self.batch_size,
            target=self.targets if guidance_scale > 0 else None,
            guidance_scale=guidance_scale,
            num_inference_steps=self.steps,
            generator=self.generator(),
            output_type="np",
        ).images

    @torch.no_grad()
    def unet_forwards(self) -> None:
        """One UNet forward pass per step (as many as a sampling call makes), no gradient."""
        for _ in range(self.steps):
            self.unet(self.noisy, self.timestep)

    def classifier_grads(self) -> None:
        """grad_x log p(c | x_t, t) once per step: the minimal work guidance adds to a sampling call."""
        rows = torch.arange(self.batch_size, device=self.device)
        for _ in range(self.steps):
            with torch.enable_grad():
                x_t = self.noisy.detach().requires_grad_(True)
                log_probs = self.classifier(x_t, self.timestep.expand(self.batch_size)).log_softmax(dim=-1)
                torch.autograd.grad(log_probs[rows, self.targets].sum(), x_t)

    def sampling_calls(self) -> dict:
        """One full sampling call per variant."""
        calls = {
            "ddim": self.ddim_sample,
            "side_unguided": lambda: self.side_sample(0.0),
            "side_guided": lambda: self.side_sample(1.0),
        }
        return {name: self.in_precision(call) for name, call in calls.items()}

    def calls(self) -> dict:
        """Every measurement: the sampling variants, and `steps` UNet forwards and classifier gradients."""
        passes = {"unet_forwards": self.unet_forwards, "classifier_grads": self.classifier_grads}
        return {**self.sampling_calls(), **{name: self.in_precision(call) for name, call in passes.items()}}


def peak_memory(config: str, variant: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """Peak memory of one sampling call: CUDA allocator peak in-process, or a fresh process's peak RSS on CPU."""
    if args.device.startswith("cuda"):
        bench = Bench(config, args)
        bench.sampling_calls()[variant]()  # warm-up (compilation, workspaces)
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device)
        bench.sampling_calls()[variant]()
        peak = torch.cuda.max_memory_allocated(args.device)
        return {"allocated_before_mib": before / 2**20, "peak_mib": peak / 2**20, "peak_over_before_mib": (peak - before) / 2**20}
    return run_child(Path(__file__), [*argv, "--config", config, "--child-memory", variant])


def child_memory(args: argparse.Namespace) -> None:
    """Child process: build the models, note the RSS peak, sample once, report the new peak."""
    bench = Bench(args.config, args)
    _, memory = measure_peak_rss(bench.sampling_calls()[args.child_memory])
    report_child_result(memory)


def round_ratios(seconds: dict) -> dict:
    """The bound and the ratios of one round (its measurements ran one after the other)."""
    bound = 1.0 + seconds["classifier_grads"] / seconds["unet_forwards"]
    return {
        "bound": bound,
        "unguided_over_ddim": seconds["side_unguided"] / seconds["ddim"],
        "guided_over_ddim": seconds["side_guided"] / seconds["ddim"],
        "guided_over_ddim_times_bound": seconds["side_guided"] / (seconds["ddim"] * bound),
    }


def summarize(timings: dict, clock: str) -> dict:
    """Median over rounds of each round's ratios, and their range over rounds.

    Ratios are taken within a round, where the five measurements ran back to back, so that a busy
    spell on a shared machine inflates numerator and denominator alike; the median over rounds then
    discards the rounds a busy spell split.
    """
    repeats = len(next(iter(timings.values()))[clock]["times_s"])
    rounds = [round_ratios({name: value[clock]["times_s"][i] for name, value in timings.items()}) for i in range(repeats)]
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]} | {
        "range_over_rounds": {key: [min(r[key] for r in rounds), max(r[key] for r in rounds)] for key in rounds[0]}
    }


def measure(config: str, args: argparse.Namespace, argv: list[str]) -> dict:
    bench = Bench(config, args)
    calls = bench.calls()
    equal = np.array_equal(calls["ddim"](), calls["side_unguided"]())
    timings = time_interleaved(calls, repeats=args.repeats, warmup=args.warmup, device=args.device)
    clock = ratio_clock(args.device)
    median_wall = {name: value["wall"]["median_s"] for name, value in timings.items()}
    result = {
        "config": config,
        "models": bench.source,
        "unet_parameters_m": round(sum(p.numel() for p in bench.unet.parameters()) / 1e6, 2),
        "classifier_parameters_m": round(sum(p.numel() for p in bench.classifier.parameters()) / 1e6, 2),
        "batch_size": args.batch_size,
        "num_inference_steps": args.steps,
        "side_unguided_equals_ddim": bool(equal),
        "clock": clock,
        "timings": timings,
        **summarize(timings, clock),
        "wall_clock": summarize(timings, "wall"),
        "images_per_s_wall": {name: args.batch_size / median_wall[name] for name in VARIANTS},
    }
    result["goal_met"] = result["guided_over_ddim_times_bound"] <= GOAL
    if not args.no_memory:
        result["memory"] = {variant: peak_memory(config, variant, args, argv) for variant in MEMORY_VARIANTS}
    return result


def format_results(results: list[dict]) -> str:
    header = [
        "config", "batch x steps", "DDIM s", "SIDE unguided s", "SIDE guided s", "UNet fwd ms / step",
        "clf fwd+bwd ms / step", "bound", "unguided / DDIM (ideal 1)", "guided / DDIM",
        "guided / (DDIM x bound) [range over rounds]", "goal <= 1.15", "same, wall clock", "img/s DDIM / guided (wall)",
        "peak MiB (+ sampling) DDIM / guided",
    ]  # fmt: skip
    rows = []
    for r in results:
        t = {name: value[r["clock"]]["median_s"] for name, value in r["timings"].items()}
        steps = r["num_inference_steps"]
        low, high = r["range_over_rounds"]["guided_over_ddim_times_bound"]
        memory = r.get("memory")
        peaks = "-"
        if memory:
            peaks = " / ".join(f"{memory[v]['peak_mib']:.0f} (+{memory[v]['peak_over_before_mib']:.0f})" for v in MEMORY_VARIANTS)
        rows.append([
            r["config"], f"{r['batch_size']} x {steps}", f"{t['ddim']:.2f}", f"{t['side_unguided']:.2f}",
            f"{t['side_guided']:.2f}", f"{1e3 * t['unet_forwards'] / steps:.1f}", f"{1e3 * t['classifier_grads'] / steps:.1f}",
            f"{r['bound']:.3f}", f"{r['unguided_over_ddim']:.3f}", f"{r['guided_over_ddim']:.3f}",
            f"{r['guided_over_ddim_times_bound']:.3f} [{low:.2f}-{high:.2f}]", "met" if r["goal_met"] else "MISSED",
            f"{r['wall_clock']['guided_over_ddim_times_bound']:.3f}",
            f"{r['images_per_s_wall']['ddim']:.2f} / {r['images_per_s_wall']['side_guided']:.2f}", peaks,
        ])  # fmt: skip
    return markdown_table(header, rows)


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["all", *MODELS], default="all")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="autocast precision; weights stay fp32 (default: fp32)"
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU nicety)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and the classifier (GPU nicety)")
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer steps and repeats (smoke run)")
    parser.add_argument("--batch-size", type=int, help="override the configuration's batch size")
    parser.add_argument("--steps", type=int, help="override the configuration's number of inference steps")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5, --quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 1; 2 with --compile)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output", help="results JSON (default: benchmarks/results/guided_sampling.json)")
    parser.add_argument("--child-memory", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("batch_size", "steps", "repeats", "warmup"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine.")
    # What a memory child needs to rebuild the same models and inputs.
    child_argv = ["--device", args.device, "--dtype", args.dtype]
    child_argv += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
    return args, child_argv


def main() -> None:
    args, child_argv = parse_args()
    torch.manual_seed(0)
    if args.child_memory:
        child_memory(args)
        return
    configs = list(MODELS) if args.config == "all" else [args.config]
    repeats, warmup = args.repeats or (2 if args.quick else 5), args.warmup
    if warmup is None:
        warmup = 2 if args.compile else 1
    results = []
    for config in configs:
        batch_size, steps = SETTINGS[config]["quick" if args.quick else "full"]
        run = argparse.Namespace(**{**vars(args), "repeats": repeats, "warmup": warmup})
        run.batch_size, run.steps = args.batch_size or batch_size, args.steps or steps
        argv = child_argv + ["--batch-size", str(run.batch_size), "--steps", str(run.steps)]
        results.append(measure(config, run, argv))
    info = machine_info(args.device)
    info.update(dtype=args.dtype, channels_last=args.channels_last, compile=args.compile)
    path = write_results("guided_sampling" + ("_quick" if args.quick else ""), {"machine": info, "results": results}, args.output)
    print(machine_line(info) + f", dtype {args.dtype}, channels_last {args.channels_last}, compile {args.compile}")
    clock = "process CPU time" if ratio_clock(args.device) == "cpu" else "wall time"
    print(
        f"Times ({clock}): medians of {repeats} alternating rounds after {warmup} warm-up round(s); ratios: median over "
        "rounds of each round's ratio. Models: " + "; ".join(f"{r['config']}: {r['models']}" for r in results)
    )
    print(format_results(results))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
