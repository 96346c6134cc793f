"""The networks of the RL update: policy (optionally LoRA), critic and frozen reference.

Precision (``RLConfig.dtype``): trainable weights are kept in fp32 (an AdamW step of lr 1e-6 is
below bf16's resolution, so bf16 master weights would silently not train); on CUDA ``auto`` and
``bfloat16`` run the forward/backward under bf16 autocast.  Frozen weights that only run inference
are stored in bf16 there: the reference copy, and with LoRA the base weights themselves.  On CPU
everything is fp32 with no autocast, unless ``rl.dtype: bfloat16`` asks for bf16 autocast there too.
``rl.train_top_layers`` freezes all but the top decoder layers (:func:`freeze_below_top_layers`).

The reference policy for the KL term is the policy with its adapters disabled under LoRA (no second
copy), else a frozen deep copy of the initial policy in eval mode.
"""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
from torch import nn

from s3core.config import RLConfig
from s3core.errors import ConfigError, InvalidArgument

__all__ = [
    "ValueModel",
    "apply_lora",
    "autocast_dtype",
    "build_reference",
    "enable_gradient_checkpointing",
    "freeze_below_top_layers",
    "is_lora",
    "load_critic",
    "load_policy",
    "resolve_device",
    "trainable_parameters",
]

def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``...; empty/None = ``cuda`` when available, else ``cpu``."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"rl.device {name!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"rl.device is {name!r} but CUDA is not available on this machine")
    return dev


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward/backward passes, or None for plain fp32.

    ``auto``: bf16 on CUDA (when the GPU supports it), fp32 on CPU; ``bfloat16``: bf16 autocast on
    CUDA and on CPU (worth it on CPUs with AVX512-BF16 / AMX: measured 1.2x on a SmolLM2-135M
    forward+backward here; trainable weights stay fp32); ``float32``: no autocast.
    """
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"rl.dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if dtype == "float32" or (device.type != "cuda" and dtype == "auto"):
        return None
    if device.type != "cuda":
        return torch.bfloat16
    if dtype == "auto" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


def is_lora(model: nn.Module) -> bool:
    """True when ``model`` is a peft model (adapters trained, base frozen)."""
    peft = sys.modules.get("peft")  # a peft model cannot exist unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an optimiser updates, by name (tied weights appear once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs need no grad)."""
    target = model.get_base_model() if is_lora(model) else model
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x name
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(target, "gradient_checkpointing_enable"):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(f"rl.gradient_checkpointing: {type(target).__name__} does not support it")


def _disable_gradient_checkpointing(model: nn.Module) -> None:
    name = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    if not getattr(model, name, False):
        return
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def apply_lora(model: nn.Module, cfg: RLConfig, task_type: str | None = "CAUSAL_LM") -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on ``cfg.lora_target_modules`` (everything else frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # optional dependency
        raise ConfigError(f"rl.lora_rank > 0 needs the 'peft' package (pip install peft): {e}") from None
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type=task_type)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, lcfg)
    except ValueError as e:
        raise ConfigError(f"rl.lora_target_modules {cfg.lora_target_modules} do not fit "
                          f"{type(model).__name__}: {e}") from None


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = model.get_base_model() if is_lora(model) else model
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"rl.train_top_layers: cannot find the decoder layers of {type(base).__name__}")
    return layers


def freeze_below_top_layers(model: nn.Module, n: int) -> None:
    """Leave only the top ``n`` decoder layers and the final norm trainable (under LoRA: only their
    adapters).  Embeddings, the LM head and every lower layer are frozen, so no gradient -- and no
    backward computation -- reaches below the ``n``-th layer from the top."""
    layers = _decoder_layers(model)
    if not 0 < n <= len(layers):
        raise ConfigError(f"rl.train_top_layers must be in 1..{len(layers)} for this model, got {n}")
    keep: set[int] = set()
    for layer in list(layers)[len(layers) - n:]:
        keep.update(id(p) for p in layer.parameters())
    base = model.get_base_model() if is_lora(model) else model
    norm = getattr(getattr(base, "model", base), "norm", None)
    if isinstance(norm, nn.Module) and not is_lora(model):
        keep.update(id(p) for p in norm.parameters())
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
        elif not is_lora(model):
            p.requires_grad_(True)


def _load_dtype(cfg: RLConfig, device: torch.device) -> torch.dtype:
    """Storage dtype of the weights loaded from disk (see the module docstring)."""
    if cfg.lora_rank > 0 and autocast_dtype(cfg.dtype, device) is not None:
        return torch.bfloat16  # frozen base under LoRA: inference-only precision is enough
    return torch.float32


def load_policy(path: str, cfg: RLConfig, device: torch.device) -> tuple[nn.Module, Any]:
    """Load the causal LM and tokenizer at ``path`` for training on ``device``.

    With ``cfg.lora_rank > 0`` the model is wrapped in LoRA adapters (fp32; base weights frozen).
    Construction runs under a forked RNG seeded from ``cfg.seed``, so adapter initialisation is
    reproducible and the caller's random state is untouched.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=_load_dtype(cfg, device))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.use_cache = False
    if cfg.lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = apply_lora(model, cfg)
    if cfg.train_top_layers:
        freeze_below_top_layers(model, cfg.train_top_layers)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(device), tokenizer


class ValueModel(nn.Module):
    """A critic: a causal LM's backbone (no LM head) plus a linear head giving one value per token.

    ``forward(input_ids [B, T], attention_mask [B, T] | None) -> [B, T]`` float32: entry ``[b, t]``
    is the value of the state made of tokens ``0..t``.  The head is zero-initialised (every state
    starts at value 0) and always runs in fp32, outside autocast.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_causal_lm(cls, model: nn.Module) -> ValueModel:
        """A critic whose backbone is a deep copy of ``model``'s (a plain, non-LoRA causal LM)."""
        if is_lora(model):
            raise InvalidArgument("ValueModel.from_causal_lm needs a plain causal LM, got a LoRA model; "
                                  "use load_critic(path, cfg, device) instead")
        backbone = copy.deepcopy(model.base_model).float().requires_grad_(True)
        return cls(backbone, int(model.config.hidden_size))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)


def load_critic(path: str, cfg: RLConfig, device: torch.device) -> ValueModel:
    """A :class:`ValueModel` whose backbone is loaded from the causal LM (or bare model) at ``path``.

    With ``cfg.lora_rank > 0`` the backbone gets LoRA adapters too (the head is fully trained).
    """
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(path, dtype=_load_dtype(cfg, device))
    backbone.config.use_cache = False
    hidden = int(backbone.config.hidden_size)
    if cfg.lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            backbone = apply_lora(backbone, cfg, task_type=None)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(backbone)
    return ValueModel(backbone, hidden).to(device)


def build_reference(policy: nn.Module, autocast: torch.dtype | None) -> nn.Module | None:
    """The frozen reference policy: None under LoRA (the trainer disables the adapters instead), else a
    deep copy in eval mode without gradients, stored in the autocast dtype when there is one."""
    if is_lora(policy):
        return None
    ref = copy.deepcopy(policy)
    _disable_gradient_checkpointing(ref)
    ref.eval()
    ref.requires_grad_(False)
    if autocast is not None:
        ref.to(autocast)
    return ref
