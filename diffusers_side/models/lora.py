"""SIDE's second branch: make the audited model itself conditional on the surrogate labels with LoRA.

The classifier branch (`SIDEPipeline`) leaves the audited UNet untouched and steers it with the gradient
of a time-dependent classifier. This branch instead fine-tunes the model on its own pseudo-labelled
samples (the output of ``side label``) so that it samples one surrogate label at a time:

1. [`add_label_conditioning`] rebuilds an unconditional `UNet2DModel` with diffusers' class embedding
   (``num_class_embeds = K' + 1``, ``class_embed_type=None``: ``class_embedding(label)`` is added to the
   time embedding). Label ``K'`` is the *null* label. The embedding starts at zero, so the conditional
   model computes exactly what the original computed, bit for bit, for every label.
2. [`add_lora_adapters`] attaches peft LoRA adapters (``B`` initialised to zero: again no change) to the
   layers of [`DEFAULT_UNET_TARGETS`] that the UNet has, and leaves only the adapters and the class
   embedding trainable.
3. Training (``training/train_lora.py``) minimises the usual denoising loss with the label replaced by
   the null label with probability ``label_dropout``, so the same network also predicts the
   unconditional noise and classifier-free guidance is available at sampling time.

What is saved is small: the adapters (``pytorch_lora_weights.safetensors``, diffusers' LoRA format with
the `LoraConfig` in its metadata), the class embedding (``class_embedding.safetensors``) and
``side_lora.json`` naming the base pipeline, so the fine-tuned result of a multi-GB base stays a few MB.
`SIDELoRAPipeline.from_pretrained` puts the three back together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
from diffusers.utils import logging
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..storage.sources import HUB, LOCAL, ModelSource
from ..utils.atomic_io import atomic_path, write_json_atomic
from ..utils.state_files import LORA_CONFIG

logger = logging.get_logger(__name__)

LORA_CONFIG_NAME = "side_lora.json"
CLASS_EMBEDDING_NAME = "class_embedding.safetensors"
ADAPTER_WEIGHT_NAME = LORA_WEIGHT_NAME_SAFE  # "pytorch_lora_weights.safetensors"
CLASS_EMBEDDING_KEY = "class_embedding.weight"

# Layer names (suffixes, as peft matches them) that receive adapters when they exist in the UNet:
# the attention projections of every attention block and the two convolutions and time projection of
# every ResNet block. The embedded digits model has attention only in its middle block.
DEFAULT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")
# Text-conditional UNets (Stable Diffusion): the paper's choice, attention layers only.
DEFAULT_TEXT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTABLE_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def add_label_conditioning(unet: UNet2DModel, num_labels: int) -> UNet2DModel:
    """
    Return a copy of an unconditional `UNet2DModel` that also takes a surrogate label (or the null label).

    The copy has ``num_class_embeds = num_labels + 1`` (label ``num_labels`` is the null label used for
    label dropout and classifier-free guidance) and the original's weights; the new embedding is zero, so
    for every label its output equals the original's bit for bit until it is trained.

    Args:
        unet (`UNet2DModel`): the audited, unconditional UNet (left unchanged).
        num_labels (`int`): K', the number of surrogate labels.

    Returns:
        `UNet2DModel`: the conditional copy, on the original's device and dtype.

    Raises:
        `TypeError`: ``unet`` is not a `UNet2DModel` (text-conditional UNets take prompts instead).
        `ValueError`: ``num_labels < 1``, or the UNet already has a class embedding.

    Example:

    ```py
    >>> from diffusers_side.models.lora import add_label_conditioning
    >>> conditional = add_label_conditioning(pipe.unet, num_labels=40)
    >>> conditional(x_t, t, class_labels=torch.tensor([3])).sample  # == pipe.unet(x_t, t).sample before training
    ```
    """
    if not isinstance(unet, UNet2DModel):
        raise TypeError(
            f"Label conditioning needs a UNet2DModel, got {type(unet).__name__}; text-conditional UNets "
            "(UNet2DConditionModel) are conditioned with one prompt per label by SIDELoRATextPipeline."
        )
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels={num_labels!r} must be a positive integer (the number of surrogate labels).")
    if unet.config.num_class_embeds is not None or unet.config.class_embed_type is not None:
        raise ValueError(
            f"The UNet is already class-conditional (num_class_embeds={unet.config.num_class_embeds}, "
            f"class_embed_type={unet.config.class_embed_type!r}); SIDE's LoRA branch audits unconditional UNets."
        )
    conditional = UNet2DModel.from_config(unet.config, num_class_embeds=num_labels + 1)
    missing, unexpected = conditional.load_state_dict(unet.state_dict(), strict=False)
    if missing != [CLASS_EMBEDDING_KEY] or unexpected:
        raise RuntimeError(f"Rebuilding the UNet with a class embedding left missing={missing}, unexpected={unexpected}.")
    torch.nn.init.zeros_(conditional.class_embedding.weight)
    if (conditional.device, conditional.dtype) != (unet.device, unet.dtype):
        conditional.to(device=unet.device, dtype=unet.dtype)
    return conditional.train(unet.training)


def find_lora_targets(model: torch.nn.Module, requested: Sequence[str] | None, defaults: Sequence[str]) -> list[str]:
    """
    The layer-name suffixes to adapt: ``requested`` (each must match a linear or conv layer), else those of ``defaults`` that exist.

    Args:
        model (`torch.nn.Module`): the UNet.
        requested (`list[str]`, *optional*): suffixes given by the user (``--lora_target_modules``).
        defaults (`list[str]`): suffixes tried when nothing is requested.

    Returns:
        `list[str]`: suffixes, each matching at least one `nn.Linear` / `nn.Conv2d` of ``model``.

    Raises:
        `ValueError`: a requested suffix matches no adaptable layer, or no default does (the message lists
            some adaptable layer names to choose from).
    """
    names = [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE_LAYERS)]

    def present(suffix: str) -> bool:
        return any(name == suffix or name.endswith(f".{suffix}") for name in names)

    candidates = list(requested) if requested else list(defaults)
    found = [suffix for suffix in candidates if present(suffix)]
    missing = [suffix for suffix in candidates if not present(suffix)]
    if (requested and missing) or not found:
        shown = sorted({name.rsplit(".", 1)[-1] if not name.endswith(".0") else name.rsplit(".", 2)[-2] + ".0"
                        for name in names})
        raise ValueError(
            f"LoRA target modules {missing or candidates} match no linear or convolution layer of this "
            f"{type(model).__name__}; its adaptable layer names end with {shown}. Pass --lora_target_modules "
            "with some of those."
        )
    return found


def add_lora_adapters(
    unet: torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    target_modules: Sequence[str] | None = None,
    defaults: Sequence[str] = DEFAULT_UNET_TARGETS,
) -> LoraConfig:
    """
    Attach trainable LoRA adapters named ``"default"`` to ``unet`` (in place) with peft's `inject_adapter_in_model`.

    (diffusers' `add_adapter` would do the same but `UNet2DModel` does not have it.)

    The adapters start as the identity (peft initialises ``B`` to zero). Afterwards only the adapters and,
    when present, the class embedding require gradients.

    Args:
        unet: a conditional `UNet2DModel` (from [`add_label_conditioning`]) or a `UNet2DConditionModel`.
        rank (`int`): the LoRA rank r (the paper uses 512 on Stable Diffusion).
        alpha (`float`, *optional*): LoRA alpha; defaults to ``rank`` (scaling 1).
        target_modules (`list[str]`, *optional*): layer-name suffixes; default: those of ``defaults`` present.
        defaults: the suffixes tried when ``target_modules`` is not given.

    Returns:
        `peft.LoraConfig`: the configuration used (also stored in ``unet.peft_config["default"]``).

    Raises:
        `ValueError`: ``rank`` is not a positive integer, ``alpha`` is not positive, or the targets do not fit.
    """
    check_rank(rank)
    if alpha is not None and alpha <= 0:
        raise ValueError(f"lora_alpha={alpha} must be positive (or None for alpha = rank).")
    targets = find_lora_targets(unet, target_modules, defaults)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=True, target_modules=targets)
    unet.requires_grad_(False)
    inject_adapter_in_model(config, unet, adapter_name="default")
    if getattr(unet, "class_embedding", None) is not None:
        unet.class_embedding.requires_grad_(True)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    logger.info(f"LoRA rank {rank} on {targets}: {trainable:,} trainable parameters.")
    return config


def check_rank(rank: int) -> None:
    """Raise a `ValueError` naming the fix unless ``rank`` is a positive integer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive integer (--rank, e.g. 8; the paper uses 512 on SD).")


def save_lora_conditioning(unet: torch.nn.Module, save_directory: str | os.PathLike, config: dict[str, Any]) -> Path:
    """
    Write the adapters, the class embedding (if any) and ``side_lora.json`` into ``save_directory``.

    Every file is written atomically; ``side_lora.json`` is written last, so a folder that has it is complete.

    Args:
        unet: the UNet carrying a peft adapter named ``"default"``.
        save_directory: the output folder (created).
        config (`dict`): what ``side_lora.json`` records (base pipeline, labels, ...); must be JSON-ready.

    Returns:
        `Path`: ``save_directory``.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The same file diffusers' `save_lora_adapter` writes: peft's state dict, the LoraConfig in the metadata.
    lora_config = json.dumps(unet.peft_config["default"].to_dict(), default=sorted, indent=2, sort_keys=True)
    adapters = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}
    with atomic_path(directory / ADAPTER_WEIGHT_NAME) as tmp:
        save_file(adapters, str(tmp), metadata={"format": "pt", LORA_ADAPTER_METADATA_KEY: lora_config})
    if getattr(unet, "class_embedding", None) is not None:
        weights = {CLASS_EMBEDDING_KEY: unet.class_embedding.weight.detach().contiguous().cpu()}
        with atomic_path(directory / CLASS_EMBEDDING_NAME) as tmp:
            save_file(weights, str(tmp), metadata={"format": "pt"})
    write_json_atomic(directory / LORA_CONFIG_NAME, config)
    return directory


def is_lora_folder(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` (a folder, an embedded name or a Hub repo id) holds a LoRA-SIDE result (``side_lora.json``).

    For a repo id only that one file is fetched (from the cache when ``HF_HUB_OFFLINE`` is set).
    """
    source = ModelSource.parse(spec)
    if source.kind != HUB:
        return (source.local_path() / LORA_CONFIG_NAME).is_file()
    if source.location.count("/") != 1:
        return False
    try:
        hf_hub_download(source.location, LORA_CONFIG_NAME, revision=source.revision)
    except (EntryNotFoundError, RepositoryNotFoundError):  # includes "not in the offline cache"
        return False
    return True


def check_shareable_base(base_model: str | None) -> None:
    """Refuse to publish adapters whose base is a local folder: nobody else could load them.

    Raises:
        `ValueError`: ``base_model`` is a local path (the message says how to fix it).
    """
    if base_model is None:
        return
    try:
        local = ModelSource.from_record(base_model).kind == LOCAL
    except OSError:  # a path that is gone is still a path
        local = True
    if local:
        raise ValueError(
            f"The adapters' base model is the local folder {base_model!r}, which a Hub user cannot load; push the base "
            "pipeline first and fine-tune from its repo id (--pretrained_model_name_or_path user/repo), or keep the "
            "adapters local."
        )


def read_lora_config(folder: Path) -> dict[str, Any]:
    """``side_lora.json`` of a saved LoRA-SIDE folder, with a clear error when the folder is something else."""
    path = folder / LORA_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {LORA_CONFIG_NAME}: it is not a LoRA-SIDE folder written by training/train_lora.py "
            "(`side train-lora`)."
        )
    return LORA_CONFIG.read(path)


def load_lora_conditioning(unet: torch.nn.Module, folder: Path, config: dict[str, Any], defaults: Sequence[str]) -> None:
    """
    Attach the adapters described by ``config`` to ``unet`` and load their weights and the class embedding from ``folder``.

    Args:
        unet: the UNet, already rebuilt with the class embedding when the folder has one.
        folder: a folder written by [`save_lora_conditioning`].
        config (`dict`): its ``side_lora.json`` (``rank``, ``lora_alpha``, ``target_modules``).
        defaults: the default target suffixes of this kind of UNet.

    Raises:
        `OSError`: the adapter weights are missing (only safetensors are read: pickles can run code).
        `ValueError`: the weights do not fit the UNet.
    """
    if not (folder / ADAPTER_WEIGHT_NAME).is_file():
        raise OSError(
            f"{folder} has no {ADAPTER_WEIGHT_NAME}; LoRA-SIDE adapters are read from safetensors only (pickled "
            "weights can run arbitrary code). Re-save them with SIDELoRAPipeline.save_pretrained."
        )
    if (folder / CLASS_EMBEDDING_NAME).is_file():
        embedding = load_file(str(folder / CLASS_EMBEDDING_NAME))[CLASS_EMBEDDING_KEY]
        if embedding.shape != unet.class_embedding.weight.shape:
            raise ValueError(
                f"The saved class embedding has shape {tuple(embedding.shape)} but the UNet's is "
                f"{tuple(unet.class_embedding.weight.shape)}; the folder and its {LORA_CONFIG_NAME} disagree."
            )
        with torch.no_grad():
            unet.class_embedding.weight.copy_(embedding)
    add_lora_adapters(unet, config["rank"], config["lora_alpha"], config["target_modules"], defaults)
    result = set_peft_model_state_dict(unet, load_file(str(folder / ADAPTER_WEIGHT_NAME)))
    missing = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"The adapters in {folder} do not fit this UNet (unexpected {result.unexpected_keys[:5]}, missing "
            f"{missing[:5]}); load them onto the base model they were trained on."
        )


def classifier_free_guidance(
    unconditional: torch.Tensor, conditional: torch.Tensor, guidance_scale: float, channels: int
) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` on the first ``channels`` channels; extra (learned-variance) channels from ``cond``."""
    guided = conditional.clone()
    guided[:, :channels] = unconditional[:, :channels] + guidance_scale * (
        conditional[:, :channels] - unconditional[:, :channels]
    )
    return guided


def check_base_unet(unet: torch.nn.Module, recorded: dict[str, Any], base_model: str) -> None:
    """Raise if ``unet`` is not the UNet the adapters were trained on (its config differs from the recorded one)."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    differences = sorted(k for k in set(config) | set(recorded) if _jsonable(config.get(k)) != recorded.get(k))
    if differences:
        raise ValueError(
            f"The base model {base_model!r} is not the one these adapters were trained on (its UNet config differs in "
            f"{differences}); pass the original with base_model=..."
        )


def _jsonable(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def is_text_conditional(spec: str | os.PathLike) -> bool:
    """Whether pipeline ``spec`` (folder, repo id or embedded name) is text-conditional: its ``model_index.json`` lists a text encoder.

    Only ``model_index.json`` is read (downloaded for a repo id).
    """
    source = ModelSource.parse(spec)
    return "text_encoder" in DiffusionPipeline.load_config(source.name_or_path, revision=source.revision)

