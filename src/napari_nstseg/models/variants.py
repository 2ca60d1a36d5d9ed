"""The registry of model variants: CDI-NSTSEG, its ablations (CDI-NSTSEG paper, table of
ablations) and the U-Net baseline, each defined once as a ModelConfig change (after timm's
``_registry.py``: ``register_variant`` adds an entry, ``variant_names()`` lists them).

Training's ``--variant``, ``nstseg predict --variant``, ``nstseg variants``, the widget's
ablation grid, the benchmarks and the scripts all read this registry. A variant's ``name`` is
what checkpoints record (provenance "variant") and what run folders are called: never rename
one. Importing this module needs no torch; only :func:`ablated_model` builds a network.

Running an ablation from the full model's weights (visual ablation) rebuilds the network with
the variant's switch and loads the SAME trained tensors, keeping only those whose name and shape
still fit. What that means per variant is in each entry's description; a variant that would need
tensors the full model lacks (a U-Net, SSL region compensation) must be trained on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

DEFAULT = "default"


@dataclass(frozen=True)
class Variant:
    """One registry entry.

    name: the identifier on the command line, in checkpoints and run folders.
    changes: the ModelConfig fields this variant sets (empty: the full model).
    display_name: the short label of the widget's ablation grid and of its layers.
    title: how the results tables (docs/comparison.md, model cards) name its rows.
    from_full_weights: it can run on the full model's trained weights (switching a module off),
        so the widget's grid and ``nstseg predict --variant`` may rebuild it from them.
    description: one line on what it tests, citing the part of the paper.
    """

    name: str
    changes: Mapping[str, Any]
    display_name: str
    title: str
    from_full_weights: bool
    description: str

    def __post_init__(self) -> None:
        ModelConfig(**dict(self.changes))  # a misspelt field or value fails at registration
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))

    @property
    def ablation(self) -> bool:
        """A module switched off in the full model's weights (the widget's ablation grid)."""
        return self.from_full_weights and bool(self.changes)


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add ``variant`` to the registry; a name or display name may be registered once."""
    taken = {v.display_name: v.name for v in _REGISTRY.values()}
    if variant.name in _REGISTRY or variant.display_name in taken:
        raise ValueError(f"A variant named {variant.name!r} is registered already.")
    _REGISTRY[variant.name] = variant
    return variant


def variant_names() -> list[str]:
    """Names of every registered variant, in registration order (``default`` first)."""
    return list(_REGISTRY)


def list_variants() -> list[Variant]:
    """Every registered variant, in registration order."""
    return list(_REGISTRY.values())


def ablation_variants() -> list[Variant]:
    """The variants that switch a module off in the full model's weights."""
    return [v for v in _REGISTRY.values() if v.ablation]


def get_variant(name: str) -> Variant:
    """The entry called ``name``; an unknown name raises ValueError listing the valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown variant {name!r}; choose one of {', '.join(_REGISTRY)}."
        ) from None


def changed_fields() -> set[str]:
    """Every ModelConfig field some variant sets (what choosing a variant resets)."""
    return {k for v in _REGISTRY.values() for k in v.changes}


def variant_config(
    variant: str = DEFAULT,
    base: ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> ModelConfig:
    """The ModelConfig of ``variant`` on top of ``base``, then free ``overrides`` of its fields."""
    data = (base or ModelConfig()).to_dict()
    data.update(get_variant(variant).changes)
    data.update(overrides or {})
    if isinstance(data.get("scales"), (int, float)):
        data["scales"] = [data["scales"]]
    return ModelConfig.from_dict(data)


def from_full_weights(variant: str) -> Variant:
    """The entry ``variant`` if it can run from the full model's weights, else ValueError in one
    sentence naming those that can (checked before any weights are read)."""
    entry = get_variant(variant)
    if not entry.from_full_weights:
        raise ValueError(
            f"The variant {variant!r} cannot run from the full model's weights ({entry.title} "
            f"is trained on its own: `nstseg train --variant {variant}`); the variants that "
            f"can are {', '.join(v.name for v in list_variants() if v.from_full_weights)}."
        )
    return entry


def ablated_config(config: Any, variant: str) -> ModelConfig:
    """The config of the full model ``config`` with ``variant``'s switch applied; ValueError in
    one sentence where the variant cannot run from those weights."""
    entry = from_full_weights(variant)
    if not isinstance(config, ModelConfig) or config.arch != "cdi_nstseg":
        raise ValueError(f"The ablation variant {variant!r} needs a CDI-NSTSEG checkpoint.")
    ablated = replace(config, **entry.changes)
    if entry.changes and ablated == config:
        raise ValueError(f"These weights were trained as {entry.display_name!r} already.")
    return ablated


def ablated_model(model: nn.Module, variant: str) -> nn.Module:
    """``model`` (a trained full CDI-NSTSEG) rebuilt as ``variant`` on the same trained tensors,
    on the same device, in eval mode."""
    from .build import build_model

    config = ablated_config(getattr(model, "config", None), variant)
    if config == model.config:
        return model
    rebuilt = build_model(config)
    trained = model.state_dict()
    own = rebuilt.state_dict()
    missing = [k for k in own if k not in trained or trained[k].shape != own[k].shape]
    if missing:
        raise ValueError(
            f"The ablation variant {variant!r} needs tensors these weights do not have "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})."
        )
    rebuilt.load_state_dict({k: trained[k] for k in own}, strict=True)
    device = next(iter(trained.values())).device if trained else None
    return rebuilt.to(device).eval()


# The registry. Order: the full model, its ablations, then what is trained on its own.
register_variant(
    Variant(
        DEFAULT,
        {},
        "full model",
        "CDI-NSTSEG",
        True,
        "the full network: shared-encoder scales, SFM, GLM and LFM stages (paper, Fig. 2)",
    )
)
register_variant(
    Variant(
        "no-sfm",
        {"scale_fusion": "mean"},
        "no SFM",
        "CDI-NSTSEG without SFM (mean of the scales)",
        True,
        "the Scale Fusion Module's per-pixel attention replaced by the mean of the three scales "
        "(paper, SFM ablation); from full weights every other tensor still applies",
    )
)
register_variant(
    Variant(
        "no-glm",
        {"glm": "none"},
        "no GLM",
        "CDI-NSTSEG without GLM",
        True,
        "the Global Localization Module's channel and spatial non-local attention skipped, its "
        "7x7 head reading the fused features (paper, GLM ablation); the attention is residual, "
        "so from full weights this is a well-defined perturbation",
    )
)
register_variant(
    Variant(
        "no-lfm",
        {"lfm_stages": 0},
        "no LFM",
        "CDI-NSTSEG without LFM stages",
        True,
        "no Layered Focusing Module: the GLM coarse map is the output (paper, LFM ablation); "
        "from full weights exactly the full model's coarse map",
    )
)
register_variant(
    Variant(
        "single-scale",
        {"scales": (1.0,)},
        "single scale 1.0",
        "CDI-NSTSEG single scale (1.0x only)",
        True,
        "the encoder on the 1.0x slice only, the SFM bypassed (paper, multi-scale ablation); "
        "from full weights indicative only, as the 1.0x features skip the SFM conv they were "
        "trained behind",
    )
)
register_variant(
    Variant(
        "unet",
        {"arch": "unet"},
        "U-Net",
        "U-Net",
        False,
        "the U-Net baseline the paper compares against (paper, comparison table)",
    )
)
register_variant(
    Variant(
        "ssl",
        {"ssl_guidance": True},
        "SSL guidance",
        "CDI-NSTSEG with SSL guidance (MAE residual maps)",
        False,
        "the masked autoencoder's residual map fed in through GRCSF region compensation "
        "(design.md, SSL residual map); needs a pretrained MAE (`nstseg pretrain-mae`)",
    )
)

__all__ = [
    "DEFAULT",
    "Variant",
    "ablated_config",
    "ablated_model",
    "ablation_variants",
    "changed_fields",
    "from_full_weights",
    "get_variant",
    "list_variants",
    "register_variant",
    "variant_config",
    "variant_names",
]
