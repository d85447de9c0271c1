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
from instructseg.modeling.loading import PretrainedLoadError

CHECKPOINT_PREFIX = "model."
CONFIG_KEY = "model_config"
#: (section, key) of the three pretrained paths in a model config dict.
PRETRAINED_KEYS = (("vision", "siglip_path"), ("llm", "path"), ("mask", "mask2former_path"))


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
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: cheap to check
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError):
        raise ValueError(
            f"{path} is not a readable training checkpoint (it must be a .ckpt written by `instructseg fit`; it may be "
            "truncated or of another program)."
        ) from None
    try:
        hparams = dict(ckpt.get("hyper_parameters") or {})
        return dict(ckpt[CONFIG_KEY]), ckpt["state_dict"], hparams
    except (AttributeError, KeyError, TypeError):
        raise ValueError(
            f"{path} is not an instructseg training checkpoint (needs state_dict and {CONFIG_KEY})."
        ) from None


def absolute_pretrained_paths(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config dict with every relative pretrained path that exists here made absolute.

    Applied when a checkpoint is written, so that it loads from any working directory (hub ids stay as they are).
    """
    out = copy.deepcopy(config_dict)
    for section, key in PRETRAINED_KEYS:
        value = out.get(section, {}).get(key)
        if value and Path(value).exists():
            out[section][key] = str(Path(value).resolve())
    return out


def _paths_beside_checkpoint(config_dict: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The config dict with each relative pretrained path that is missing here but exists beside the checkpoint (its
    folder or the folder above, e.g. a run directory) made absolute there; hub ids and other paths stay."""
    out = copy.deepcopy(config_dict)
    for section, key in PRETRAINED_KEYS:
        value = out.get(section, {}).get(key)
        if not value or Path(value).is_absolute() or Path(value).exists():
            continue
        for base in (checkpoint.parent, checkpoint.parent.parent):
            if (base / value).exists():
                out[section][key] = str((base / value).resolve())
                break
    return out


def _model_from_checkpoint(
    path: str | Path, config_overrides: dict | None, pretrained_root: str | Path | None = None
) -> tuple[InstructSeg, dict[str, Any], dict[str, Any]]:
    config_dict, state, hparams = read_training_checkpoint(path)
    merged = deep_update(_paths_beside_checkpoint(config_dict, Path(path)), config_overrides or {})
    config = InstructSegConfig.from_dict(merged)
    if pretrained_root is not None:
        config = config.with_pretrained_root(pretrained_root)
    try:
        model = InstructSeg.from_config(config)
    except PretrainedLoadError as err:
        raise PretrainedLoadError(
            f"{path}: the frozen parts are re-loaded from the checkpoint's pretrained paths, and one is missing on "
            f"this machine ({err}). Pass pretrained_root=<folder with siglip/, llm/, mask2former/> "
            "(CLI: --pretrained_root)."
        ) from None
    load_trainable_weights(model, state, config_dict, str(path))
    return model.eval(), config_dict, hparams


def load_training_checkpoint(
    path: str | Path, config_overrides: dict | None = None, pretrained_root: str | Path | None = None
) -> InstructSeg:
    """Build :meth:`InstructSeg.from_config` from a ``.ckpt``'s model config and load its trainable weights.

    The frozen parts load from the stored pretrained paths (absolute since checkpoints store them so; an older
    relative one is also looked up beside the checkpoint), unless ``pretrained_root`` is given.

    Args:
        path: Lightning checkpoint written by :class:`instructseg.lit_module.InstructSegModule`.
        config_overrides: nested dict merged into the stored config, e.g. ``{"llm": {"path": "/local/phi-2"}}``
            when the pretrained parts live elsewhere on this machine.
        pretrained_root: a folder holding ``siglip/``, ``llm/`` and ``mask2former/`` that replaces the three stored
            pretrained paths (a checkpoint copied to another machine).

    Returns:
        The model in ``eval()`` mode (LoRA not merged).

    Raises:
        PretrainedLoadError: a pretrained part is missing (the message says how to point at this machine's copy).
    """
    return _model_from_checkpoint(path, config_overrides, pretrained_root)[0]


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    metrics: dict | None = None,
    config_overrides: dict | None = None,
    overwrite: bool = False,
    pretrained_root: str | Path | None = None,
) -> Path:
    """:func:`load_training_checkpoint`, then :meth:`InstructSeg.save_pretrained` with the run's hyper-parameters.

    The destination is checked before the model is built (:func:`instructseg.io.check_export_destination`);
    ``pretrained_root`` as in :func:`load_training_checkpoint`.
    """
    from instructseg.io import check_export_destination

    check_export_destination(out_dir, overwrite)
    model, _, hparams = _model_from_checkpoint(checkpoint, config_overrides, pretrained_root)
    training_config = {k: v for k, v in hparams.items() if k not in ("model_config", "_instantiator")}
    return model.save_pretrained(out_dir, metrics=metrics, training_config=training_config, overwrite=overwrite)
