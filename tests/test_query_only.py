"""Query-only SIDE: the black box is the plain pipeline, the budget is exact, the search is seeded and gradient-free."""

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.audits.query_only import (
    ClassifierFitness,
    ExemplarFitness,
    PipelineBlackBox,
    plain_noises,
    query_only_search,
    split_budget,
)
from diffusers_side.generation.seeds import image_seed
from diffusers_side.guidance.exemplar import ExemplarPosterior

SHAPE = (1, 16, 16)
PATTERN = torch.linspace(0, 1, 256).reshape(1, *SHAPE)


class CountingBox:
    """A toy black box (noise -> sigmoid(noise)) that counts its queries."""

    def __init__(self):
        self.num_queries, self.calls = 0, []

    def __call__(self, noise):
        self.num_queries += len(noise)
        self.calls.append(len(noise))
        return torch.sigmoid(noise)


def toy_fitness(images, targets):
    """Closeness to a fixed pattern (target 1: its negative), larger is better."""
    pattern = torch.where(targets.view(-1, 1, 1, 1) == 1, 1 - PATTERN, PATTERN)
    return -((images - pattern) ** 2).flatten(1).mean(dim=1)


toy_fitness.num_conditions = 2


@pytest.fixture
def tiny_pipe():
    return SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50))


@pytest.fixture
def tiny_classifier():
    torch.manual_seed(0)
    return TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=8).eval()


def test_black_box_is_plain_ddim_sampling_from_the_same_noise(tiny_pipe):
    noise = plain_noises(3, SHAPE, seed=5)
    images = PipelineBlackBox(tiny_pipe, num_inference_steps=4)(noise)
    generators = [torch.Generator().manual_seed(image_seed(5, i, "extraction")) for i in range(3)]
    reference = DDIMPipeline(tiny_pipe.unet, tiny_pipe.scheduler)(
        batch_size=3, generator=generators, num_inference_steps=4, output_type="np"
    ).images
    assert torch.equal(images, torch.from_numpy(reference).permute(0, 3, 1, 2))


def test_stochastic_scheduler_black_box_is_seeded_per_query(tiny_pipe):
    pipe = SIDEPipeline(tiny_pipe.unet, DDPMScheduler(num_train_timesteps=50))
    noise = plain_noises(4, SHAPE, seed=0)
    whole = PipelineBlackBox(pipe, num_inference_steps=3, seed=1)(noise)
    split_box = PipelineBlackBox(pipe, num_inference_steps=3, seed=1, batch_size=3)
    # one query's step noise does not depend on batching (up to batch-size-dependent float rounding)
    torch.testing.assert_close(whole, split_box(noise), rtol=0, atol=1e-5)
    assert (whole - PipelineBlackBox(pipe, num_inference_steps=3, seed=2)(noise)).abs().max() > 0.1


def test_search_never_touches_a_gradient(tiny_pipe, tiny_classifier):
    modes = []
    hooks = [model.register_forward_hook(lambda module, args, output: modes.append(torch.is_inference_mode_enabled()))
             for model in (tiny_pipe.unet, tiny_classifier)]
    generate = PipelineBlackBox(tiny_pipe, num_inference_steps=2)
    result = query_only_search(generate, ClassifierFitness(tiny_classifier), [0, 2], 10, generate.noise_shape, popsize=3)
    for hook in hooks:
        hook.remove()
    assert len(modes) == 2 * 4 + 4  # two UNet steps and one classifier call per batch of queries (4 batches)
    assert all(modes)
    assert all(p.grad is None for p in [*tiny_pipe.unet.parameters(), *tiny_classifier.parameters()])
    assert all(p.requires_grad for p in tiny_classifier.parameters()) and not tiny_classifier.training
    assert generate.num_queries == result.num_queries == 10
    # every kept image is what the API returns for its recorded noise (batched differently: float rounding only)
    regenerated = PipelineBlackBox(tiny_pipe, num_inference_steps=2)(result.noises)
    torch.testing.assert_close(regenerated, result.images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_queries, popsize", [(3, 4), (31, 4), (50, 5), (61, None)])
def test_budget_is_respected_exactly(num_queries, popsize):
    box = CountingBox()
    targets = [1, 0]
    result = query_only_search(box, toy_fitness, targets, num_queries, SHAPE, popsize=popsize)
    assert box.num_queries == result.num_queries == num_queries
    assert [int((result.targets == t).sum()) for t in targets] == split_budget(num_queries, 2)
    assert max(box.calls) <= (popsize or 4 + int(3 * np.log(256)))
    assert result.images.shape == (num_queries, *SHAPE) and result.fitness.shape == (num_queries,)


def test_split_budget():
    assert split_budget(10, 3) == [4, 3, 3]
    assert split_budget(9, 3) == [3, 3, 3]


def test_search_is_deterministic_and_leaves_global_rngs_alone():
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    first = query_only_search(CountingBox(), toy_fitness, [0, 1], 40, SHAPE, popsize=6, seed=3)
    second = query_only_search(CountingBox(), toy_fitness, [0, 1], 40, SHAPE, popsize=6, seed=3)
    other = query_only_search(CountingBox(), toy_fitness, [0, 1], 40, SHAPE, popsize=6, seed=4)
    assert torch.equal(first.noises, second.noises) and torch.equal(first.fitness, second.fitness)
    assert not torch.equal(first.noises, other.noises)
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)
    # a target's search depends on (seed, target) only, not on the other targets
    alone = query_only_search(CountingBox(), toy_fitness, [1], 20, SHAPE, popsize=6, seed=3)
    assert torch.equal(alone.noises, first.noises[first.targets == 1])


def test_fitness_improves_over_the_initial_population():
    result = query_only_search(CountingBox(), toy_fitness, [0, 1], 400, SHAPE, popsize=10, seed=0, num_best=3)
    for target in (0, 1):
        rows = result.targets == target
        initial = result.fitness[rows & (result.generation == 0)]
        assert len(initial) == 10
        assert result.fitness[rows].max() > initial.max() + 0.01
        last = result.fitness[rows & (result.generation == result.generation[rows].max() - 1)]
        assert last.mean() > initial.mean() + 0.01  # the population moved, not only one lucky draw
    best = result.best_indices.view(2, 3)
    assert (result.targets[best] == torch.tensor([[0], [1]])).all()
    assert torch.equal(result.fitness[best[:, 0]], torch.stack([result.fitness[result.targets == t].max() for t in (0, 1)]))
    trace = result.best_so_far()
    for target in (0, 1):
        assert (trace[result.targets == target].diff() >= 0).all()


def test_initial_noises_lie_on_the_standard_normal_shell():
    result = query_only_search(CountingBox(), toy_fitness, [0], 30, SHAPE, popsize=10)
    norms = result.noises.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 16.0))


def test_classifier_fitness_is_the_log_probability_at_t0(tiny_classifier):
    tiny_classifier.train()
    images = torch.rand(5, *SHAPE)
    targets = torch.tensor([0, 1, 2, 0, 1])
    scores = ClassifierFitness(tiny_classifier)(images, targets)
    assert tiny_classifier.training  # restored
    with torch.no_grad():
        expected = tiny_classifier.eval()(images * 2 - 1, torch.zeros(5)).log_softmax(-1)[torch.arange(5), targets]
    torch.testing.assert_close(scores, expected)


def test_exemplar_fitness_prefers_the_matching_condition():
    labels = torch.tensor([0, 1] * 5)
    exemplars = ExemplarPosterior((labels.float() * 1.4 - 0.7)[:, None, None, None].expand(10, *SHAPE).clone(), labels, 2)
    fitness = ExemplarFitness(exemplars, alpha_bar=0.9)
    dark = torch.full((1, *SHAPE), 0.2)
    both = fitness(dark.expand(2, *SHAPE), torch.tensor([0, 1]))
    assert both[0] > both[1] and torch.allclose(both.exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="alpha_bar=1.0 must lie in"):
        ExemplarFitness(exemplars, alpha_bar=1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"targets": []}, "targets is empty"),
        ({"targets": 3}, "must be a sequence of condition ids"),
        ({"targets": [0, 0]}, "must be distinct non-negative"),
        ({"targets": [0, 2]}, "target 2 is out of range: the fitness has 2 conditions"),
        ({"num_queries": 1}, "num_queries=1 must be an integer >= the number of targets \\(2\\)"),
        ({"noise_shape": (1, 0, 16)}, "noise_shape=\\(1, 0, 16\\) must be positive integers"),
        ({"popsize": 1}, "popsize=1 must be an integer >= 2"),
        ({"sigma0": 0.0}, "sigma0=0.0 must be a positive finite step size"),
        ({"num_best": 0}, "num_best=0 must be a positive integer"),
    ],
)
def test_bad_input_is_refused_before_any_query(kwargs, message):
    box = CountingBox()
    arguments = {"targets": [0, 1], "num_queries": 10, "noise_shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=message):
        query_only_search(box, toy_fitness, arguments.pop("targets"), arguments.pop("num_queries"), arguments.pop("noise_shape"),
                          **arguments)
    assert box.num_queries == 0


def test_bad_black_box_and_fitness_outputs_are_named(tiny_pipe):
    with pytest.raises(TypeError, match="must be a SIDEPipeline"):
        PipelineBlackBox(DDIMPipeline(tiny_pipe.unet, tiny_pipe.scheduler))
    generate = PipelineBlackBox(tiny_pipe, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"noise must be a \(B, 1, 16, 16\) tensor; got \(2, 1, 8, 8\)"):
        generate(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="latents must be a tensor of shape \\(2, 1, 16, 16\\)"):
        tiny_pipe(batch_size=2, latents=torch.randn(3, 1, 16, 16), num_inference_steps=2)
    with pytest.raises(ValueError, match="one finite score per image"):
        query_only_search(CountingBox(), lambda images, targets: torch.full((len(images),), float("nan")), [0], 5, SHAPE)
    with pytest.raises(ValueError, match="one image per noise"):
        query_only_search(lambda noise: noise[:1], toy_fitness, [0], 5, SHAPE)
