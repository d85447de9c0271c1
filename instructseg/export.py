"""Export a trained model to a self-contained directory, load it back strictly, and load training checkpoints.

An export directory (``format_version`` 1) holds::

    config.json          InstructSegConfig + "format_version" + "merged_lora"; the pretrained paths are the
                         sub-directories below (relative to the export directory)
    model.safetensors    every weight of the model with LoRA merged (frozen towers included)
    siglip/config.json   architecture of the SigLIP tower
    llm/config.json      architecture of the LLM, and its tokenizer files (special tokens included)
    mask2former/config.json
    README.md            model card: training configuration, metrics, how to load

Writing is atomic: everything goes to ``<out>.tmp-<pid>``, ``config.json`` last (it is the completion marker), then
the directory is renamed to ``<out>``. An interrupted export never leaves a directory that loads.

Training checkpoints (Lightning ``.ckpt`` of :class:`instructseg.lit_module.InstructSegModule`) hold the model
config dict under the top-level key ``"model_config"`` and, in ``state_dict``, only the
trainable parameters under the prefix ``model.``; the frozen towers are re-loaded from the configured pretrained
paths. They are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from instructseg.config import InstructSegConfig, _deep_update
from instructseg.modeling.instructseg import InstructSeg

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PART_DIRS = ("siglip", "llm", "mask2former")
CHECKPOINT_PREFIX = "model."
_MAX_LISTED = 20


class ExportFormatError(ValueError):
    """A directory is not a complete export of a supported ``format_version``."""


class WeightsMismatchError(ValueError):
    """Stored weights do not match the model's parameters (missing / unexpected keys, other shapes)."""


def _listed(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_weights(
    expected: dict[str, torch.Size], found: dict[str, torch.Tensor], source: str, shape_hint: str = ""
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``found`` has exactly the keys and shapes of ``expected``.

    Args:
        expected: parameter name → shape of the model.
        found: parameter name → stored tensor.
        source: where the weights come from (for the message).
        shape_hint: sentence appended when shapes differ.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{source} does not match the model: {len(missing)} missing key(s) [{_listed(missing)}]; "
            f"{len(unexpected)} unexpected key(s) [{_listed(unexpected)}]."
        )
    wrong = [
        f"{k}: stored {tuple(found[k].shape)} vs model {tuple(v)}"
        for k, v in expected.items()
        if tuple(found[k].shape) != tuple(v)
    ]
    if wrong:
        raise WeightsMismatchError(f"{source}: {len(wrong)} shape mismatch(es) [{_listed(wrong)}]. {shape_hint}")


def _safetensors_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` as contiguous CPU tensors; tensors sharing storage (tied weights) are cloned."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def _model_card(model: InstructSeg, metrics: dict | None, training_config: dict | None) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        f"# InstructSeg export (`{model.config.name}` preset)",
        "",
        f"InstructSeg model with LoRA merged into the LLM; {n_params / 1e6:.1f} M parameters in `{WEIGHTS_NAME}`; "
        f"export format version {FORMAT_VERSION}.",
        "",
        "## How to load",
        "",
        "```python",
        "from instructseg.predictor import InstructSegPredictor",
        "",
        'predictor = InstructSegPredictor.from_pretrained("path/to/this/directory")  # device="cuda", dtype=...',
        'pred = predictor.predict_image("photo.jpg", "the dog on the left")  # .mask (H, W) bool, .score, .no_target',
        'video = predictor.predict_video("frames/", "the car turning right")  # .masks (T, H, W)',
        "```",
        "",
        "or `InstructSeg.from_pretrained(dir)` for the bare model, or the CLI:",
        '`instructseg predict --model DIR --input IMAGE|VIDEO|FRAMES_DIR --text "..." --out OUT`.',
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics were given at export time.")
    lines += ["", "## Training configuration", ""]
    if training_config:
        lines += ["```json", json.dumps(training_config, indent=2, sort_keys=True, default=str), "```"]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Model configuration", "", "```json", json.dumps(model.config.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)


def _write_export(model: InstructSeg, directory: Path, metrics: dict | None, training_config: dict | None) -> None:
    from safetensors.torch import save_file

    save_file(_safetensors_state(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    model.siglip.tower.config.save_pretrained(directory / "siglip")
    model.llm.base_model.config.save_pretrained(directory / "llm")
    model.tokenizer.save_pretrained(directory / "llm")
    model.mask_decoder.decoder.config.save_pretrained(directory / "mask2former")
    (directory / "README.md").write_text(_model_card(model, metrics, training_config))
    config = model.config.to_dict()
    config["vision"]["siglip_path"], config["llm"]["path"], config["mask"]["mask2former_path"] = PART_DIRS
    config.update(format_version=FORMAT_VERSION, merged_lora=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))  # last: the completion marker


def export_model(
    model: InstructSeg, out_dir: str | Path, metrics: dict | None = None, training_config: dict | None = None
) -> Path:
    """Merge LoRA (on a copy) and write a self-contained export directory atomically.

    Args:
        model: the trained model (left untouched).
        out_dir: destination directory; an existing one is replaced once the new export is complete.
        metrics: name → value, shown as a table in the model card.
        training_config: training hyper-parameters recorded in the model card.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    if model.tokenizer is None:
        raise ValueError("export_model: the model has no tokenizer; build it with InstructSeg.from_config().")
    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged = copy.deepcopy(model)
    merged.llm.merge_lora()
    try:
        tmp.mkdir(parents=True)
        _write_export(merged, tmp, metrics, training_config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_export_config(path: str | Path) -> InstructSegConfig:
    """The model configuration of an export directory, with its pretrained paths pointing inside it.

    Raises:
        FileNotFoundError: no directory at ``path``.
        ExportFormatError: an incomplete export, or one of another ``format_version``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No export directory at {path}.")
    config_file = path / CONFIG_NAME
    if not config_file.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise ExportFormatError(
            f"{path} is not a complete instructseg export (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "an interrupted export? Run `instructseg export` again."
        )
    try:
        data = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ExportFormatError(f"{config_file} is not valid JSON: {err}") from None
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ExportFormatError(
            f"{path} has export format_version {version!r}; this instructseg reads version {FORMAT_VERSION}. "
            "Re-export the checkpoint with this version (`instructseg export`)."
        )
    if not data.pop("merged_lora", False):
        raise ExportFormatError(f"{path}: exports must have their LoRA merged (`merged_lora: true`).")
    return InstructSegConfig.from_dict(data).with_pretrained_root(path)


def load_export(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> InstructSeg:
    """Build the architecture from an export's stored configs and load ``model.safetensors`` strictly.

    Args:
        path: export directory written by :func:`export_model`.
        device: where to put the model.
        dtype: cast every weight to this dtype (default: as stored, fp32).

    Returns:
        The model in ``eval()`` mode.

    Raises:
        ExportFormatError: incomplete export / other format version / unreadable weights.
        WeightsMismatchError: the weights file has missing or unexpected keys (all are listed) or other shapes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_export_config(path)
    model = InstructSeg.from_config(config, weights=False, with_lora=False)
    weights = Path(path) / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ExportFormatError(f"Cannot read {weights}: {err}") from None
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_weights(expected, state, str(weights), "The export does not match its own config.json.")
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def _read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(model_config dict, state_dict, hyper_parameters)`` of a Lightning training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No training checkpoint at {path}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"Cannot read {path} as a training checkpoint (torch.load weights_only=True): {err}") from None
    try:
        hparams = dict(ckpt.get("hyper_parameters") or {})
        return dict(ckpt["model_config"]), ckpt["state_dict"], hparams
    except (AttributeError, KeyError, TypeError):
        raise ValueError(
            f"{path} is not an instructseg training checkpoint (needs state_dict and model_config)."
        ) from None


def load_trainable_weights(
    model: InstructSeg, state_dict: dict[str, torch.Tensor], checkpoint_config: dict | None = None, source: str = ""
) -> None:
    """Load a training checkpoint's trainable parameters (``"model." + name``) into ``model``, strictly.

    Args:
        model: the model whose :meth:`~InstructSeg.trainable_parameters` receive the weights.
        state_dict: the checkpoint's ``state_dict``.
        checkpoint_config: the checkpoint's model config dict, to compare presets.
        source: where the weights come from (for messages).

    Raises:
        WeightsMismatchError: another preset, missing / unexpected keys, or other shapes.
    """
    source = source or "training checkpoint"
    if checkpoint_config is not None and checkpoint_config.get("name") != model.config.name:
        raise WeightsMismatchError(
            f"{source}: checkpoint from a different preset ({checkpoint_config.get('name')!r}; the model is "
            f"{model.config.name!r})."
        )
    trainable = model.trainable_parameters()
    expected = {CHECKPOINT_PREFIX + k: p.shape for k, p in trainable.items()}
    hint = "checkpoint from a different preset (or other pretrained parts than the configured ones)."
    check_weights(expected, state_dict, source, hint)
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(state_dict[CHECKPOINT_PREFIX + name])


def _model_from_checkpoint(path: str | Path, config_overrides: dict | None) -> tuple[InstructSeg, dict[str, Any]]:
    config_dict, state, hparams = _read_checkpoint(path)
    config = InstructSegConfig.from_dict(_deep_update(config_dict, config_overrides or {}))
    model = InstructSeg.from_config(config)
    load_trainable_weights(model, state, config_dict, str(path))
    return model.eval(), hparams


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
    checkpoint: str | Path, out_dir: str | Path, metrics: dict | None = None, config_overrides: dict | None = None
) -> Path:
    """:func:`load_training_checkpoint` then :func:`export_model`, recording the checkpoint's hyper-parameters."""
    model, hparams = _model_from_checkpoint(checkpoint, config_overrides)
    training_config = {k: v for k, v in hparams.items() if k != "model_config"}
    return export_model(model, out_dir, metrics, training_config)
