"""The SIDE paper's guide: a time-dependent classifier p_phi(c | x_t, t) read on the noisy sample x_t.

    eps_guided = eps_theta(x_t, t) - sqrt(1 - abar_t) * lambda * grad_x log p_phi(c | x_t, t)

(the condition-score form, [`~diffusers_side.guidance.base.ScoreGuide`]). With a time-independent classifier
p_phi(c | x) the same guide is Carlini et al.'s "Cond" baseline.
"""

from __future__ import annotations

import torch

from ..models.classifier import TimeDependentClassifier
from .base import ScoreGuide
from .schedule import GuidanceWindow


class ClassifierGuide(ScoreGuide):
    """
    Classifier guidance on x_t (``guidance_space="xt"``, the paper).

    Args:
        classifier ([`TimeDependentClassifier`]): p_phi(c | x_t, t) over the surrogate conditions (kept frozen).
        window ([`GuidanceWindow`] or `tuple`, *optional*): guide only at timesteps in ``[t_min, t_max]``.

    Example:

    ```py
    >>> from diffusers_side.guidance.classifier import ClassifierGuide
    >>> out = pipe(batch_size=4, guide=ClassifierGuide(pipe.classifier, window=(0, 500)), guidance_scale=2.0)  # doctest: +SKIP
    ```
    """

    def __init__(self, classifier: TimeDependentClassifier, window: GuidanceWindow | tuple[float, float] | None = None):
        super().__init__(window)
        self.classifier = classifier

    @property
    def num_conditions(self) -> int:
        return self.classifier.config.num_classes

    def check(self, pipe, sample_shape, num_inference_steps=None) -> None:
        check_classifier_reads(self.classifier, sample_shape)
        super().check(pipe, sample_shape, num_inference_steps)

    def frozen_modules(self, pipe) -> list[torch.nn.Module]:
        return [self.classifier]

    def log_prob_gradient(self, pipe, x_t, timestep, alpha_bar, targets) -> torch.Tensor:
        """g = grad_x log p_phi(c | x_t, t), taken w.r.t. the noisy images only (the classifier is frozen)."""
        with torch.enable_grad():
            x = x_t.detach().to(self.classifier.dtype).requires_grad_(True)
            log_probs = self.classifier(x, timestep.expand(x.shape[0])).log_softmax(dim=-1)
            selected = log_probs[torch.arange(x.shape[0], device=x.device), targets].sum()
            (gradient,) = torch.autograd.grad(selected, x)
        return gradient.to(x_t.dtype)


def check_classifier_reads(classifier: TimeDependentClassifier, sample_shape: tuple[int, ...]) -> None:
    """Raise if ``classifier`` cannot read samples of shape ``(C, H, W)`` (channels or resolution differ)."""
    if not isinstance(classifier, TimeDependentClassifier):
        raise TypeError(f"classifier must be a TimeDependentClassifier, got {type(classifier).__name__}.")
    size = classifier.config.sample_size
    expected = (classifier.config.in_channels, *((size, size) if isinstance(size, int) else size))
    if tuple(expected) != tuple(sample_shape):
        raise ValueError(
            f"The classifier expects {'x'.join(map(str, expected))} images but the UNet samples "
            f"{'x'.join(map(str, sample_shape))}; train the classifier at the UNet's resolution and channels "
            "(training/train_classifier.py reads them from the pipeline)."
        )
