"""The Lightning training-checkpoint format of :class:`instructseg.lit_module.InstructSegModule`, both sides.

A training ``.ckpt`` holds, besides Lightning's optimizer / scheduler / loop state:

* ``state_dict``: only the **trainable** parameters, under the prefix :data:`CHECKPOINT_PREFIX` (``"model."``);
  the frozen towers are re-loaded from the configured pretrained paths;
* ``model_config``: the model configuration as a plain dict (so the file loads with ``torch.load(weights_only=True)``);
* ``rng_state``: torch (and CUDA) RNG state, so a resumed run continues exactly.

Writing: :func:`trainable_state` (``on_save_checkpoint``). Reading: :func:`check_trainable_state`
(``on_load_checkpoint``), :func:`read_training_checkpoint`, :func:`load_training_checkpoint` and
:func:`export_checkpoint`.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import torch

from instructseg.config import InstructSegConfig, deep_update
from instructseg.io import WeightsMismatchError, check_weights
from instructseg.modeling.instructseg import InstructSeg

CHECKPOINT_PREFIX = "model."
CONFIG_KEY = "model_config"


def trainable_state(model: InstructSeg, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a LightningModule ``state_dict`` that belong to ``model``'s trainable parameters."""
    keep = {CHECKPOINT_PREFIX + name for name in model.trainable_parameters()}
    return {k: v for k, v in state_dict.items() if k in keep}


def check_trainable_state(
    model: InstructSeg, state_dict: dict[str, torch.Tensor], stored_config: dict | None = None, source: str = ""
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state_dict`` holds exactly ``model``'s trainable parameters.

    Args:
        model: the model that will receive the weights.
        state_dict: a checkpoint's ``state_dict`` (keys ``"model." + name``).
        stored_config: the checkpoint's model config dict, to name a different preset.
        source: where the weights come from (for messages).
    """
    source = source or "training checkpoint"
    stored = (stored_config or {}).get("name", model.config.name)
    if stored != model.config.name:
        raise WeightsMismatchError(
            f"{source}: checkpoint from a different preset ({stored!r}; the model is {model.config.name!r})."
        )
    expected = {CHECKPOINT_PREFIX + k: p.shape for k, p in model.trainable_parameters().items()}
    hint = "Checkpoint from another configuration (or other pretrained parts than the configured ones)."
    check_weights(expected, state_dict, source, hint)


def load_trainable_weights(
    model: InstructSeg, state_dict: dict[str, torch.Tensor], stored_config: dict | None = None, source: str = ""
) -> None:
    """:func:`check_trainable_state`, then copy the weights into ``model``'s trainable parameters."""
    check_trainable_state(model, state_dict, stored_config, source)
    with torch.no_grad():
        for name, param in model.trainable_parameters().items():
            param.copy_(state_dict[CHECKPOINT_PREFIX + name])


def read_training_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(model_config dict, state_dict, hyper_parameters)`` of a training checkpoint.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable instructseg training checkpoint (one line, no torch text).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No training checkpoint at {path}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError):
        raise ValueError(
            f"{path} is not a readable training checkpoint (it must be a .ckpt written by `instructseg fit`; it may be "
            "truncated or of another program)."
        ) from None
    try:
        hparams = dict(ckpt.get("hyper_parameters") or {})
        return dict(ckpt[CONFIG_KEY]), ckpt["state_dict"], hparams
    except (AttributeError, KeyError, TypeError):
        raise ValueError(f"{path} is not an instructseg training checkpoint (needs state_dict and {CONFIG_KEY}).") from None


def absolute_pretrained_paths(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config dict with every relative pretrained path that exists here made absolute.

    Applied when a checkpoint is written, so that it loads from any working directory (hub ids stay as they are).
    """
    out = copy.deepcopy(config_dict)
    for section, key in (("vision", "siglip_path"), ("llm", "path"), ("mask", "mask2former_path")):
        value = out.get(section, {}).get(key)
        if value and Path(value).exists():
            out[section][key] = str(Path(value).resolve())
    return out


def _model_from_checkpoint(
    path: str | Path, config_overrides: dict | None
) -> tuple[InstructSeg, dict[str, Any], dict[str, Any]]:
    config_dict, state, hparams = read_training_checkpoint(path)
    config = InstructSegConfig.from_dict(deep_update(config_dict, config_overrides or {}))
    model = InstructSeg.from_config(config)
    load_trainable_weights(model, state, config_dict, str(path))
    return model.eval(), config_dict, hparams


def load_training_checkpoint(path: str | Path, config_overrides: dict | None = None) -> InstructSeg:
    """Build :meth:`InstructSeg.from_config` from a ``.ckpt``'s model config and load its trainable weights.

    Args:
        path: Lightning checkpoint written by :class:`instructseg.lit_module.InstructSegModule`.
        config_overrides: nested dict merged into the stored config, e.g. ``{"llm": {"path": "/local/phi-2"}}``
            when the pretrained parts live elsewhere on this machine.

    Returns:
        The model in ``eval()`` mode (LoRA not merged).
    """
    return _model_from_checkpoint(path, config_overrides)[0]


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    metrics: dict | None = None,
    config_overrides: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`load_training_checkpoint`, then :meth:`InstructSeg.save_pretrained` with the run's hyper-parameters.

    The destination is checked before the model is built (:func:`instructseg.io.check_export_destination`).
    """
    from instructseg.io import check_export_destination

    check_export_destination(out_dir, overwrite)
    model, _, hparams = _model_from_checkpoint(checkpoint, config_overrides)
    training_config = {k: v for k, v in hparams.items() if k not in ("model_config", "_instantiator")}
    return model.save_pretrained(out_dir, metrics=metrics, training_config=training_config, overwrite=overwrite)
