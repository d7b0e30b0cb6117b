"""Exemplar (Bayes) guidance: the exact posterior of the noised labelled synthetic set, used in place of a classifier.

SIDE trains a time-dependent classifier p_phi(c | x_t, t) on noised copies of the labelled synthetic
images. That classifier approximates a quantity that can be computed exactly: with the labelled
synthetic images m (in [-1, 1]) and the forward process q(x_t | m) = N(sqrt(abar_t) m, (1 - abar_t) I),

    p(c | x_t) = sum_{m in c} w_m / sum_m w_m,    w_m = exp(-||x_t - sqrt(abar_t) m||^2 / (2 (1 - abar_t))),

    grad_x log p(c | x_t) = sqrt(abar_t) (E[m | x_t, c] - E[m | x_t]) / (1 - abar_t).

The gradient is exact, needs no training and carries signal at high noise, where a trained classifier
is near chance. With the condition-score shift ([`ExemplarGuide`], a
[`~diffusers_side.guidance.base.ScoreGuide`]) it moves the predicted clean image by exactly
``guidance_scale * (E[m | x_t, c] - E[m | x_t])``. Cost per step: one ``batch x N_syn``
distance matrix. Computed in float64 with log-sum-exp.

Not in the SIDE paper (a deviation, see README "Results on the embedded model").
"""

from __future__ import annotations

import os

import torch

from ..models.codec import PixelCodec
from ..storage.data import find_image_column, images_to_tensor, load_image_dataset
from .base import ScoreGuide
from .schedule import GuidanceWindow


class ExemplarPosterior:
    """
    p(c | x_t) of a labelled image set under the diffusion forward process, and its gradient in x_t.

    Args:
        images (`torch.Tensor`): ``(N, C, H, W)`` images in ``[-1, 1]`` (the labelled synthetic set).
        labels (`torch.Tensor`): ``(N,)`` int labels in ``0 .. num_classes - 1``.
        num_classes (`int`): number of surrogate conditions K'.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.guidance.exemplar import ExemplarPosterior
    >>> posterior = ExemplarPosterior(torch.rand(8, 1, 4, 4) * 2 - 1, torch.tensor([0, 1] * 4), num_classes=2)
    >>> posterior.gradient(torch.randn(3, 1, 4, 4), torch.tensor(0.5), torch.tensor([0, 1, 1])).shape
    torch.Size([3, 1, 4, 4])
    ```
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        labels = torch.as_tensor(labels).long().reshape(-1)
        if images.ndim != 4 or len(images) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"ExemplarPosterior needs (N, C, H, W) images and N labels with N > 0; got images of shape "
                f"{tuple(images.shape)} and {len(labels)} labels."
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"Labels must lie in 0..{num_classes - 1}; got {int(labels.min())}..{int(labels.max())}.")
        self.image_shape = tuple(images.shape[1:])
        self.images = images.flatten(1).double()
        self.labels = labels
        self.num_classes = num_classes

    @classmethod
    def from_labelled_set(cls, path: str | os.PathLike, num_classes: int | None = None) -> "ExemplarPosterior":
        """Read the output folder of ``side label`` (columns image, label); ``num_classes`` defaults to max label + 1."""
        dataset = load_image_dataset(str(path))
        if "label" not in dataset.column_names:
            raise ValueError(f"{path} has no 'label' column; pass the output directory of `side label`.")
        images = images_to_tensor(dataset[find_image_column(dataset)]) * 2 - 1
        labels = torch.tensor(dataset["label"])
        return cls(images, labels, int(labels.max()) + 1 if num_classes is None else num_classes)

    def encoded(self, codec: PixelCodec, batch_size: int = 256) -> "ExemplarPosterior":
        """The same labelled set in the space the UNet samples: a latent target's codec encodes the images (the
        posterior's mode of an `AutoencoderKL`); a pixel target's codec leaves them as they are (``self``)."""
        if not codec.is_latent:
            return self
        images = self.images.view(-1, *self.image_shape).float()
        with torch.no_grad():
            samples = torch.cat([codec.encode(chunk).float().cpu() for chunk in images.split(batch_size)])
        return ExemplarPosterior(samples, self.labels, self.num_classes)

    def log_weights(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` log w_m (up to a per-row constant) of every exemplar for every noisy image."""
        if tuple(x_t.shape[1:]) != self.image_shape:
            raise ValueError(f"Noisy images of shape {tuple(x_t.shape[1:])} do not match the exemplars' {self.image_shape}.")
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        distances = torch.cdist(x_t.flatten(1).double(), alpha_bar.sqrt() * self.images.to(x_t.device)).pow(2)
        return -distances / (2 * (1 - alpha_bar))

    def gradient(self, x_t: torch.Tensor, alpha_bar: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """grad_x log p(target | x_t) for each image, same shape and dtype as ``x_t``."""
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        log_w = self.log_weights(x_t, alpha_bar)
        in_target = self.labels.to(x_t.device).unsqueeze(0) == targets.reshape(-1, 1)
        if not in_target.any(dim=1).all():
            raise ValueError("A target condition has no exemplar; every target must be a label of the exemplar set.")
        posterior_all = log_w.softmax(dim=1)
        posterior_target = log_w.masked_fill(~in_target, float("-inf")).softmax(dim=1)
        mean_shift = (posterior_target - posterior_all) @ self.images.to(x_t.device)
        return (alpha_bar.sqrt() * mean_shift / (1 - alpha_bar)).view_as(x_t).to(x_t.dtype)

    def predict(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The most probable condition of each image (argmax_c p(c | x_t))."""
        log_w = self.log_weights(x_t, alpha_bar)
        per_class = torch.full((len(x_t), self.num_classes), float("-inf"), dtype=log_w.dtype, device=log_w.device)
        index = self.labels.to(log_w.device).unsqueeze(0).expand_as(log_w)
        per_class = per_class.scatter_reduce(1, index, log_w, reduce="amax")
        # exact log-sum-exp per class: subtract the class maximum before summing
        summed = torch.zeros_like(per_class).scatter_add(1, index, (log_w - per_class.gather(1, index)).exp())
        return (per_class + summed.log()).argmax(dim=1)


class ExemplarGuide(ScoreGuide):
    """
    Exemplar (Bayes) guidance: the exact gradient of the labelled synthetic set's posterior replaces the classifier's.

    Args:
        exemplars ([`ExemplarPosterior`]): the labelled synthetic set (`ExemplarPosterior.from_labelled_set`).
        window ([`GuidanceWindow`] or `tuple`, *optional*): guide only at timesteps in ``[t_min, t_max]``.

    Example:

    ```py
    >>> from diffusers_side.guidance.exemplar import ExemplarGuide, ExemplarPosterior
    >>> guide = ExemplarGuide(ExemplarPosterior.from_labelled_set("side-demo/labels"))
    >>> out = pipe(batch_size=4, guide=guide, guidance_scale=10.0)  # doctest: +SKIP
    ```
    """

    def __init__(self, exemplars: ExemplarPosterior, window: GuidanceWindow | tuple[float, float] | None = None):
        super().__init__(window)
        self.exemplars = exemplars

    @property
    def num_conditions(self) -> int:
        return self.exemplars.num_classes

    def check(self, pipe, sample_shape, num_inference_steps=None) -> None:
        if tuple(self.exemplars.image_shape) != tuple(sample_shape):
            raise ValueError(
                f"The exemplars are {self.exemplars.image_shape} images but the UNet samples {tuple(sample_shape)}; label "
                "a synthetic set sampled from this UNet (a latent target's exemplars are its latents: pass "
                "`exemplars.encoded(pipe.codec)`)."
            )
        super().check(pipe, sample_shape, num_inference_steps)

    def log_prob_gradient(self, pipe, x_t, timestep, alpha_bar, targets) -> torch.Tensor:
        return self.exemplars.gradient(x_t, alpha_bar, targets)
