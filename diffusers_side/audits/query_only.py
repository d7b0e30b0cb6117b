"""Query-only SIDE (paper App. E): extraction through a generation API, by black-box search over initial noises.

White-box SIDE steers every denoising step with grad_x log p_phi(c | x_t, t). An auditor who can only *query*
the model (send an initial noise x_T, receive an image) has no such gradient. Query-only SIDE searches the
model's inputs instead: for each target surrogate condition c, a black-box optimizer proposes initial noises,
the API turns each into an image (**one query per image**), and the fitness of an image x is

    F_c(x) = log p_phi(c | x, t = 0)     (the surrogate classifier on the clean image, `ClassifierFitness`), or
    F_c(x) = log p(c | sqrt(abar) x)     (the exact posterior of the labelled synthetic set, `ExemplarFitness`).

Nothing here reads the UNet's weights or gradients: `query_only_search` sees noises, images and fitness values
only, and `PipelineBlackBox` runs the plain unconditional pipeline under `torch.inference_mode`.

Optimizer: CMA-ES from the `cma` package (Hansen's reference implementation), with a diagonal covariance by
default (sep-CMA-ES: a budget of a few hundred queries per target is far below the d^2 samples a full
covariance in d = C*H*W needs). The paper uses a genetic algorithm; CMA-ES is the standard stronger choice for
continuous black-box search. Each candidate z in R^d is sent as x_T = sqrt(d) z / ||z||, on the sphere where
standard normal noise concentrates, so that a recombined mean (shorter than any sample) never leaves the
sampler's typical input; the first generation (mean 0, step size 1) is plain sampling up to that norm.

Budget: ``num_queries`` images in all, split as evenly as possible over the targets (the first
``num_queries mod T`` targets get one more); a last generation that does not fit is cut short and not told
to the optimizer. Every target's search draws from its own generator, seeded with ``(seed, target)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import cma
import numpy as np
import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..generation.seeds import EXTRACTION, image_seed
from ..guidance.base import frozen
from ..guidance.exemplar import ExemplarPosterior
from ..pipelines.pipeline_side import SIDEPipeline

logger = logging.get_logger(__name__)

# A black box: (B, C, H, W) initial noises -> (B, C, H, W) images in [0, 1]; one query per image.
GenerateFn = Callable[[torch.Tensor], torch.Tensor]
# A fitness: images in [0, 1] and one target per image -> (B,) scores, larger is better.
FitnessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PipelineBlackBox:
    """
    A generation API made from a plain unconditional pipeline call: initial noises in, images out, no gradients.

    Args:
        pipe ([`SIDEPipeline`]): the pipeline under audit; it samples unguided (guidance scale 0) whatever it holds.
        num_inference_steps (`int`, *optional*): denoising steps; defaults to the pipeline's own default.
        eta (`float`, defaults to 0.0): DDIM's eta (0: the image is a deterministic function of the noise).
        batch_size (`int`, defaults to 64): images per pipeline call.
        seed (`int`, defaults to 0): seeds the step noise of stochastic schedulers (query ``i`` draws it from
            `image_seed(seed, i, "extraction")`); unused by deterministic ones.

    Example:

    ```py
    >>> from diffusers_side.pipelines.loading import load_pipeline
    >>> from diffusers_side.audits.query_only import PipelineBlackBox
    >>> generate = PipelineBlackBox(load_pipeline("digits-rare"))
    >>> images = generate(torch.randn(4, *generate.noise_shape))  # 4 queries
    >>> generate.num_queries
    4
    ```
    """

    def __init__(self, pipe: SIDEPipeline, num_inference_steps: int | None = None, eta: float = 0.0, batch_size: int = 64,
                 seed: int = 0):
        if not isinstance(pipe, SIDEPipeline):
            raise TypeError(f"pipe must be a SIDEPipeline (it takes initial latents), got {type(pipe).__name__}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be a positive integer or None.")
        self.noise_shape = tuple(pipe.sample_shape)
        self.pipe, self.eta, self.batch_size, self.seed = pipe, eta, batch_size, seed
        self.num_inference_steps = num_inference_steps or pipe.default_num_inference_steps()
        self.num_queries = 0
        pipe.set_progress_bar_config(disable=True)

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        """Generate one image per initial noise ``(B, C, H, W)``; returns ``(B, C, H, W)`` images in [0, 1] on the CPU."""
        if not torch.is_tensor(noise) or noise.ndim != 4 or tuple(noise.shape[1:]) != self.noise_shape:
            got = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
            raise ValueError(f"noise must be a (B, {', '.join(map(str, self.noise_shape))}) tensor; got {got}.")
        images = []
        with torch.inference_mode():
            for start in range(0, len(noise), self.batch_size):
                chunk = noise[start : start + self.batch_size]
                generators = [torch.Generator().manual_seed(image_seed(self.seed, self.num_queries + i, EXTRACTION)) for i in range(len(chunk))]
                output = self.pipe(
                    batch_size=len(chunk), generator=generators, latents=chunk, guidance_scale=0.0,
                    num_inference_steps=self.num_inference_steps, eta=self.eta, output_type="pt",
                )
                images.append(output.images.float().cpu())
                self.num_queries += len(chunk)
        return torch.cat(images)


class ClassifierFitness:
    """
    F_c(x) = log p_phi(c | x, t) of a surrogate classifier on generated images (t = 0: the clean image).

    Args:
        classifier ([`TimeDependentClassifier`]): the surrogate classifier (a time-independent one ignores t).
        timestep (`int`, defaults to 0): the timestep it reads the images at.
    """

    def __init__(self, classifier: torch.nn.Module, timestep: int = 0):
        self.classifier, self.timestep = classifier, timestep
        self.num_conditions = classifier.config.num_classes
        self.image_shape = (classifier.config.in_channels, classifier.config.sample_size, classifier.config.sample_size)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-probabilities of each image's target; images in [0, 1]."""
        parameter = next(self.classifier.parameters())
        with torch.inference_mode(), frozen(self.classifier):
            x = images.to(device=parameter.device, dtype=parameter.dtype) * 2 - 1
            timesteps = torch.full((len(x),), self.timestep, device=x.device, dtype=torch.long)
            log_probs = self.classifier(x, timesteps).float().log_softmax(dim=-1)
            return log_probs.gather(1, targets.to(x.device).long().view(-1, 1)).squeeze(1).cpu()


class ExemplarFitness:
    """
    F_c(x) = log p(c | sqrt(abar) x) of the labelled synthetic set (`ExemplarPosterior`) at noise level abar.

    Args:
        exemplars ([`ExemplarPosterior`]): the labelled synthetic images.
        alpha_bar (`float`): the noise level, in (0, 1); close to 1 the posterior is a hard nearest-exemplar vote.
    """

    def __init__(self, exemplars: ExemplarPosterior, alpha_bar: float):
        if not 0 < float(alpha_bar) < 1:
            raise ValueError(f"alpha_bar={alpha_bar!r} must lie in (0, 1), e.g. a scheduler's alphas_cumprod[t].")
        self.exemplars, self.alpha_bar = exemplars, torch.tensor(float(alpha_bar), dtype=torch.float64)
        self.num_conditions = exemplars.num_classes
        self.image_shape = exemplars.image_shape

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log p(target | image); images in [0, 1]."""
        with torch.inference_mode():
            log_w = self.exemplars.log_weights(self.alpha_bar.sqrt() * (images.double() * 2 - 1), self.alpha_bar)
            in_target = self.exemplars.labels.unsqueeze(0) == targets.long().view(-1, 1)
            return (log_w.masked_fill(~in_target, float("-inf")).logsumexp(dim=1) - log_w.logsumexp(dim=1)).float()


@dataclass
class QueryOnlyResult:
    """
    What a query-only search asked and got, in query order.

    Args:
        targets (`torch.Tensor`): ``(Q,)`` the condition each query searched for.
        fitness (`torch.Tensor`): ``(Q,)`` the fitness of each query's image (the fitness trace).
        generation (`torch.Tensor`): ``(Q,)`` the optimizer generation of each query within its target's search.
        noises (`torch.Tensor`): ``(Q, C, H, W)`` the initial noises sent.
        images (`torch.Tensor` or `None`): ``(Q, C, H, W)`` the images received, in [0, 1] (`None` unless kept).
        best_indices (`torch.Tensor`): indices of the best queries, ``num_best`` per target (fewer if it had fewer
            queries), target by target, best first.
    """

    targets: torch.Tensor
    fitness: torch.Tensor
    generation: torch.Tensor
    noises: torch.Tensor
    images: torch.Tensor | None
    best_indices: torch.Tensor

    @property
    def num_queries(self) -> int:
        """Q, the number of images generated."""
        return len(self.fitness)

    def best_so_far(self) -> torch.Tensor:
        """``(Q,)`` for each query, the best fitness its target had reached up to and including it."""
        best = torch.empty_like(self.fitness)
        for target in self.targets.unique():
            rows = torch.nonzero(self.targets == target).squeeze(1)
            best[rows] = self.fitness[rows].cummax(dim=0).values
        return best


def split_budget(num_queries: int, num_targets: int) -> list[int]:
    """``num_queries`` split as evenly as possible over ``num_targets`` (the first ones get the remainder)."""
    share, extra = divmod(num_queries, num_targets)
    return [share + (position < extra) for position in range(num_targets)]


def plain_noises(num_queries: int, noise_shape: Sequence[int], seed: int, stream: str = EXTRACTION) -> torch.Tensor:
    """The initial noises of plain sampling: query ``i`` from `image_seed(seed, i, stream)`, as ``side extract`` draws them."""
    if num_queries == 0:
        return torch.empty(0, *noise_shape)
    generators = [torch.Generator().manual_seed(image_seed(seed, i, stream)) for i in range(num_queries)]
    return torch.cat([torch.randn(1, *noise_shape, generator=generator) for generator in generators])


def _check_search_inputs(generate, fitness, targets, num_queries, noise_shape, popsize, sigma0, num_best) -> list[int]:
    if not callable(generate) or not callable(fitness):
        raise TypeError("generate and fitness must be callables (see PipelineBlackBox and ClassifierFitness).")
    if isinstance(targets, (int, str)) or not hasattr(targets, "__iter__"):
        raise ValueError(f"targets={targets!r} must be a sequence of condition ids, e.g. [0, 1, 2].")
    targets = [int(t) for t in targets]
    if not targets:
        raise ValueError("targets is empty; pass the surrogate conditions to search for, e.g. [0, 1, 2].")
    if len(set(targets)) != len(targets) or min(targets) < 0:
        raise ValueError(f"targets={targets} must be distinct non-negative condition ids.")
    num_conditions = getattr(fitness, "num_conditions", None)
    if num_conditions is not None and max(targets) >= num_conditions:
        raise ValueError(f"target {max(targets)} is out of range: the fitness has {num_conditions} conditions (0..{num_conditions - 1}).")
    if not isinstance(num_queries, int) or num_queries < len(targets):
        raise ValueError(f"num_queries={num_queries!r} must be an integer >= the number of targets ({len(targets)}): "
                         "every target needs at least one query; pass fewer targets or a larger budget.")
    if len(noise_shape) == 0 or any(not isinstance(s, int) or s < 1 for s in noise_shape):
        raise ValueError(f"noise_shape={tuple(noise_shape)} must be positive integers, e.g. (C, H, W) of the UNet.")
    if popsize is not None and (not isinstance(popsize, int) or popsize < 2):
        raise ValueError(f"popsize={popsize!r} must be an integer >= 2, or None for CMA-ES's default 4 + 3 ln(d).")
    if not (isinstance(sigma0, (int, float)) and math.isfinite(sigma0) and sigma0 > 0):
        raise ValueError(f"sigma0={sigma0!r} must be a positive finite step size (1.0: the noise prior's scale).")
    if not isinstance(num_best, int) or num_best < 1:
        raise ValueError(f"num_best={num_best!r} must be a positive integer.")
    return targets


def to_noise(candidates: np.ndarray, noise_shape: Sequence[int]) -> torch.Tensor:
    """Candidates ``(B, d)`` sent as initial noises: x_T = sqrt(d) z / ||z||, reshaped to ``(B, *noise_shape)``."""
    z = torch.from_numpy(np.asarray(candidates, dtype=np.float64))
    z = z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return z.float().reshape(len(z), *noise_shape)


def _search_target(generate, fitness, target: int, budget: int, noise_shape, popsize, sigma0, seed, diagonal, keep_images):
    """CMA-ES on one target with exactly ``budget`` queries; returns the per-query records of this target."""
    dimension = int(np.prod(noise_shape))
    rng = np.random.default_rng([seed, target])
    options = {"randn": lambda *shape: rng.standard_normal(shape), "seed": float("nan"), "verbose": -9, "verb_log": 0,
               "verb_disp": 0, "CMA_diagonal": diagonal}
    if popsize is not None:
        options["popsize"] = popsize
    strategy = cma.CMAEvolutionStrategy(np.zeros(dimension), float(sigma0), options)
    records = {"fitness": [], "generation": [], "noises": [], "images": []}
    used, generation = 0, 0
    while used < budget:
        candidates = np.asarray(strategy.ask())
        count = min(len(candidates), budget - used)
        noise = to_noise(candidates[:count], noise_shape)
        images = generate(noise)
        if not torch.is_tensor(images) or len(images) != count:
            raise ValueError(f"generate returned {getattr(images, 'shape', type(images).__name__)} for {count} noises; "
                             "it must return one image per noise.")
        scores = torch.as_tensor(fitness(images, torch.full((count,), target, dtype=torch.long))).float().reshape(-1)
        if len(scores) != count or not torch.isfinite(scores).all():
            raise ValueError(f"The fitness returned {scores.tolist()[:4]}... for {count} images of target {target}; "
                             "it must return one finite score per image.")
        if count == len(candidates):  # a generation cut short by the budget is evaluated, not told
            strategy.tell(list(candidates), (-scores.double()).tolist())  # CMA-ES minimises
        records["fitness"].append(scores)
        records["generation"].append(torch.full((count,), generation))
        records["noises"].append(noise)
        if keep_images:
            records["images"].append(images.detach().float().cpu())
        used, generation = used + count, generation + 1
    return {key: torch.cat(value) if value else None for key, value in records.items()}


def query_only_search(
    generate: GenerateFn,
    fitness: FitnessFn,
    targets: Sequence[int],
    num_queries: int,
    noise_shape: Sequence[int],
    *,
    popsize: int | None = None,
    sigma0: float = 1.0,
    seed: int = 0,
    num_best: int = 1,
    diagonal: bool = True,
    keep_images: bool = True,
) -> QueryOnlyResult:
    """
    Search initial noises for images of each target condition, through ``generate`` only, with exactly ``num_queries`` queries.

    Args:
        generate (`Callable`): the black box, ``(B, *noise_shape)`` noises -> ``(B, C, H, W)`` images in [0, 1]
            (e.g. [`PipelineBlackBox`]); every image it returns is one query.
        fitness (`Callable`): ``(images, targets) -> (B,)`` scores, larger is better (e.g. [`ClassifierFitness`]).
        targets (sequence of `int`): distinct surrogate conditions, searched one after the other.
        num_queries (`int`): Q, the total budget (at least one per target), split by `split_budget`.
        noise_shape (sequence of `int`): ``(C, H, W)`` of one initial noise.
        popsize (`int`, *optional*): CMA-ES's population lambda; default 4 + floor(3 ln d), d = prod(noise_shape).
        sigma0 (`float`, defaults to 1.0): the initial step size (1: the first generation is plain sampling).
        seed (`int`, defaults to 0): the search is a deterministic function of it (given a deterministic black box).
        num_best (`int`, defaults to 1): best queries kept per target in ``best_indices``.
        diagonal (`bool`, defaults to `True`): sep-CMA-ES (diagonal covariance); `False` for the full matrix.
        keep_images (`bool`, defaults to `True`): return every query's image (``False`` keeps noises only).

    Returns:
        [`QueryOnlyResult`]: every query's target, fitness, generation, noise (and image), and the best per target.

    Raises:
        `ValueError` / `TypeError`: a bad argument, before any query.

    Example:

    ```py
    >>> from diffusers_side.audits.query_only import ClassifierFitness, PipelineBlackBox, query_only_search
    >>> from diffusers_side.pipelines.loading import load_classifier, load_pipeline
    >>> generate = PipelineBlackBox(load_pipeline("digits-rare"))
    >>> fitness = ClassifierFitness(load_classifier("side-demo-rare/classifier-side"))
    >>> result = query_only_search(generate, fitness, targets=[0, 1], num_queries=200, noise_shape=generate.noise_shape)
    >>> result.num_queries, result.images[result.best_indices].shape
    (200, torch.Size([2, 1, 16, 16]))
    ```
    """
    targets = _check_search_inputs(generate, fitness, targets, num_queries, noise_shape, popsize, sigma0, num_best)
    noise_shape = tuple(noise_shape)
    records, best, offset = [], [], 0
    for target, budget in zip(tqdm(targets, desc="query-only SIDE targets", unit="target"), split_budget(num_queries, len(targets))):
        record = _search_target(generate, fitness, target, budget, noise_shape, popsize, sigma0, seed, diagonal, keep_images)
        record["targets"] = torch.full((budget,), target, dtype=torch.long)
        best.append(offset + record["fitness"].argsort(descending=True, stable=True)[:num_best])
        records.append(record)
        offset += budget
        logger.info(f"target {target}: {budget} queries, best fitness {float(record['fitness'].max()):.3f} "
                    f"(first generation {float(record['fitness'][record['generation'] == 0].max()):.3f})")
    joined = {key: torch.cat([r[key] for r in records]) if keep_images or key != "images" else None for key in records[0]}
    return QueryOnlyResult(
        targets=joined["targets"], fitness=joined["fitness"], generation=joined["generation"], noises=joined["noises"],
        images=joined["images"], best_indices=torch.cat(best),
    )
