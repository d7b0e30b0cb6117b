"""`TimeDependentClassifier`: the noisy-image classifier p_phi(y | x_t, t) that guides SIDE sampling.

The architecture follows the paper (Fig. 9): a ResNet whose only change is a time module — a
sinusoidal embedding of t followed by an MLP — added to the feature map **once, right after the
first BatchNorm**. With ``time_dependent=False`` the time module is absent and the same network is
the time-independent classifier of the Carlini et al. "Cond" baseline.

The module path of this file is part of the on-disk format (`model_index.json` stores
``["diffusers_side.models.classifier", "TimeDependentClassifier"]``): do not move it. Folders saved before the
package was laid out by concept record ``diffusers_side.classifier``, which remains as an alias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# Blocks per stage (BasicBlock). Stage s has base_channels * 2**s channels and halves the resolution (s > 0).
# resnet18 / resnet34: torchvision's layouts (the paper's classifier is resnet34); resnet10: one block per stage of
# the same four stages; resnet8: the three-stage CIFAR ResNet of He et al. (2016, Sec. 4.2) with n = 1 (6n + 2 layers),
# sized for images of 16 px and less (see `diffusers_side.models.classifier_size`).
RESNET_LAYOUTS = {"resnet8": (1, 1, 1), "resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


FUSED_ATTRIBUTE = "fused_inference"  # False on a BatchNorm2d (`set_fused_inference`) keeps it a layer of its own


def conv_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(conv(hidden))``, as one channels-last convolution with the BatchNorm folded in when no weight needs a gradient.

    In eval mode a BatchNorm is the affine map gamma (x - mu) / sqrt(var + eps) + beta of its running statistics, so
    it folds into the preceding convolution's weights and bias (`torch.nn.utils.fusion.fuse_conv_bn_weights`), and the
    folded weights are laid out channels-last, which lets oneDNN keep every activation in one layout instead of
    reordering it around each convolution. The result is the same up to float rounding (relative 1e-7 to 1e-6 on a
    trained network), and a guided sampling step skips a BatchNorm forward and backward per convolution: about a
    third of the demo classifier's gradient cost (benchmarks README, "Speed cuts"). Training, and any eval forward that
    may back-propagate into the weights, keep the two layers. With channels-last weights the gradient w.r.t. a
    3-channel input comes back channels-last strided (the same values; 1-channel inputs are unaffected).
    """
    trainable = torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (conv.weight, norm.weight, norm.bias))
    if norm.training or trainable or not getattr(norm, FUSED_ATTRIBUTE, True) or norm.running_mean is None:
        return norm(conv(hidden))
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    weight = weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(hidden, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with BatchNorm and a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(conv_batch_norm(self.conv1, self.norm1, hidden))
        out = conv_batch_norm(self.conv2, self.norm2, out)
        shortcut = hidden if isinstance(self.shortcut, nn.Identity) else conv_batch_norm(*self.shortcut, hidden)
        return F.relu(out + shortcut)


class TimeDependentClassifier(ModelMixin, ConfigMixin):
    r"""
    A ResNet image classifier conditioned on the diffusion timestep, p_phi(y | x_t, t).

    Args:
        in_channels (`int`, defaults to 3): channels of the images (1 for grayscale).
        sample_size (`int`, defaults to 32): height and width of the images; any size from 8 up works
            (the head pools adaptively), but it must match the UNet the classifier guides.
        num_classes (`int`, defaults to 10): number of surrogate conditions (kept clusters K').
        layers (`str`, defaults to `"resnet18"`): block layout, a key of `RESNET_LAYOUTS`: `"resnet8"` (three stages
            of one block), `"resnet10"` (four of one), `"resnet18"` or `"resnet34"` (the paper's);
            `diffusers_side.models.classifier_size.auto_classifier_size` picks one from the image size.
        base_channels (`int`, defaults to 32): width of the first stage; stages use 1x, 2x, 4x (, 8x).
        time_dependent (`bool`, defaults to `True`): add the time module after the first BatchNorm. `False`
            gives the time-independent classifier of the Carlini "Cond" baseline (timesteps are ignored).
        time_embedding_dim (`int`, *optional*): width of the timestep MLP; defaults to `4 * base_channels`.
        label_info (`dict`, *optional*): what the labels mean — number of kept clusters, their cohesion,
            the feature extractor, K, tau and N_syn — stored in `config.json` so a saved classifier explains
            itself.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side import TimeDependentClassifier

    >>> classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=5)
    >>> logits = classifier(torch.randn(4, 1, 16, 16), timestep=torch.tensor([0, 250, 500, 999]))
    >>> logits.shape
    torch.Size([4, 5])
    ```
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_size: int = 32,
        num_classes: int = 10,
        layers: str = "resnet18",
        base_channels: int = 32,
        time_dependent: bool = True,
        time_embedding_dim: int | None = None,
        label_info: dict | None = None,
    ):
        super().__init__()
        if layers not in RESNET_LAYOUTS:
            raise ValueError(f"layers={layers!r} is not a known layout; choose one of {sorted(RESNET_LAYOUTS)}.")
        if sample_size < 8:
            raise ValueError(f"sample_size={sample_size} is too small; the classifier needs images of at least 8x8.")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes.")

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1, bias=False)
        self.norm_in = nn.BatchNorm2d(base_channels)
        if time_dependent:
            time_embedding_dim = time_embedding_dim or 4 * base_channels
            self.time_proj = Timesteps(base_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embedding = TimestepEmbedding(base_channels, time_embedding_dim)
            self.time_to_channels = nn.Linear(time_embedding_dim, base_channels)

        stages, channels = [], base_channels
        for stage, num_blocks in enumerate(RESNET_LAYOUTS[layers]):
            out_channels = base_channels * 2**stage
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.blocks = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

    def set_fused_inference(self, enabled: bool) -> "TimeDependentClassifier":
        """Fold every BatchNorm into its (channels-last) convolution in frozen eval forwards (`True`, the default) or never.

        See `conv_batch_norm`: folding changes results only by float rounding; `False` restores the layer-by-layer
        computation (the reference that tests and benchmarks compare against). Returns the classifier.
        """
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                setattr(module, FUSED_ATTRIBUTE, enabled)
        return self

    def _time_features(self, timestep: torch.Tensor | float | int, batch_size: int, device, dtype) -> torch.Tensor:
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=device)
        timestep = timestep.to(device=device, dtype=torch.float32).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(batch_size)
        elif timestep.numel() != batch_size:
            raise ValueError(f"Got {timestep.numel()} timesteps for a batch of {batch_size}; pass one or one per sample.")
        embedding = self.time_embedding(self.time_proj(timestep).to(dtype))
        return self.time_to_channels(F.silu(embedding))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int | None = None) -> torch.Tensor:
        """
        Classify noisy images.

        Args:
            sample (`torch.Tensor`): x_t of shape `(batch, in_channels, height, width)`, in the UNet's input
                scale (sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with x_0 in [-1, 1]).
            timestep (`torch.Tensor`, `float` or `int`): t, one for the batch or one per sample; floats are
                accepted for sigma schedulers. Ignored (and optional) when `time_dependent=False`.

        Returns:
            `torch.Tensor`: logits of shape `(batch, num_classes)`.
        """
        hidden = conv_batch_norm(self.conv_in, self.norm_in, sample)
        if self.config.time_dependent:
            if timestep is None:
                raise ValueError("This classifier is time-dependent: pass the diffusion timestep of `sample`.")
            # The paper's time module: injected once, right after the first BatchNorm (Fig. 9).
            time = self._time_features(timestep, sample.shape[0], sample.device, hidden.dtype)
            hidden = hidden + time[:, :, None, None]
        hidden = self.blocks(F.relu(hidden))
        return self.head(F.adaptive_avg_pool2d(hidden, 1).flatten(1))
