"""The export format: what a self-contained model directory holds, how it is written and how it is checked.

An export directory (``format_version`` 1) holds::

    config.json          InstructSegConfig + "format_version" + "merged_lora"; the pretrained paths are the
                         sub-directories below (relative to the export directory)
    model.safetensors    every weight of the model with LoRA merged (frozen towers included)
    siglip/config.json   architecture of the SigLIP tower
    llm/config.json      architecture of the LLM, and its tokenizer files (special tokens included)
    mask2former/config.json
    README.md            model card

Writing is atomic (:func:`atomic_export_dir`): everything goes to a temporary sibling directory, ``config.json`` last
(it is the completion marker), then the directory is renamed into place. An interrupted export never leaves a
directory that loads, and the temporary directory is removed on failure. An existing ``out`` is replaced only when it
is an export and ``overwrite`` is set; any other existing path is refused, so a user's folder is never deleted.

This module imports nothing from :mod:`instructseg.modeling`: the model class's ``save_pretrained`` /
``from_pretrained`` build on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from instructseg.config import InstructSegConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PART_DIRS = ("siglip", "llm", "mask2former")
MAX_LISTED_KEYS = 20
#: Permissions of written files and directories (``tempfile.mkdtemp`` would leave the directory 0700).
FILE_MODE, DIR_MODE = 0o644, 0o755


class ExportFormatError(ValueError):
    """A directory is not a complete export of a supported ``format_version``."""


class WeightsMismatchError(ValueError):
    """Stored weights do not match the model's parameters (missing / unexpected keys, other shapes)."""


def listed(keys: list[str]) -> str:
    """At most :data:`MAX_LISTED_KEYS` keys, comma-separated, with a count of the rest."""
    more = f" ... (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


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
            f"{source} does not match the model: {len(missing)} missing key(s) [{listed(missing)}]; "
            f"{len(unexpected)} unexpected key(s) [{listed(unexpected)}]."
        )
    wrong = [
        f"{k}: stored {tuple(found[k].shape)} vs model {tuple(v)}"
        for k, v in expected.items()
        if tuple(found[k].shape) != tuple(v)
    ]
    if wrong:
        raise WeightsMismatchError(f"{source}: {len(wrong)} shape mismatch(es) [{listed(wrong)}]. {shape_hint}")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`WeightsMismatchError` if any floating-point tensor holds NaN or inf (they would give NaN masks)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsMismatchError(f"{source}: {len(bad)} tensor(s) hold NaN or inf values [{listed(sorted(bad))}].")


def safetensors_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` as contiguous CPU tensors; tensors sharing storage (tied weights) are cloned."""
    seen: set[int] = set()
    out = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def export_config_dict(config: InstructSegConfig) -> dict[str, Any]:
    """``config.json`` of an export: the config with its pretrained paths pointing at the part sub-directories."""
    data = config.to_dict()
    data["vision"]["siglip_path"], data["llm"]["path"], data["mask"]["mask2former_path"] = PART_DIRS
    data.update(format_version=FORMAT_VERSION, merged_lora=True)
    return data


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an export's ``config.json`` with a ``format_version``."""
    config_file = Path(path) / CONFIG_NAME
    try:
        return "format_version" in json.loads(config_file.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_export_destination(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse a destination that would destroy data, before any work starts.

    Args:
        out: the export directory to write.
        overwrite: replace an existing export there.

    Raises:
        FileExistsError: ``out`` exists and is not an export (never replaced), or is an export and ``overwrite`` is
            not set.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not is_export_dir(out):
            raise FileExistsError(
                f"{out} exists and is not an instructseg export; choose a new --out (existing folders are never "
                "replaced)."
            )
        if not overwrite:
            raise FileExistsError(f"{out} already holds an export; pass --overwrite to replace it.")
    return out


def _normal_permissions(root: Path) -> None:
    root.chmod(DIR_MODE)
    for path in root.rglob("*"):
        path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


@contextlib.contextmanager
def atomic_export_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it becomes ``out``, on failure it is removed.

    The caller writes ``config.json`` last. Files get mode 0644 and directories 0755.

    Raises:
        FileExistsError: see :func:`check_export_destination` (checked before anything is written).
    """
    out = check_export_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


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


def read_export_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of an export directory, checked to be finite.

    Raises:
        ExportFormatError: the file cannot be read.
        WeightsMismatchError: a tensor holds NaN or inf.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ExportFormatError(f"Cannot read {weights}: {err}") from None
    check_finite(state, str(weights))
    return state


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | int | str]:
    """Nested metrics (``metrics.json`` of an evaluation) flattened to ``"a/b/c" -> value`` scalars."""
    out: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[name] = value
    return out


def model_card(
    config: InstructSegConfig,
    num_parameters: int,
    metrics: dict[str, Any] | None = None,
    training_config: dict[str, Any] | None = None,
) -> str:
    """The export's ``README.md`` in the Hugging Face model-card format (YAML front matter + sections).

    Args:
        config: the model configuration.
        num_parameters: parameter count of ``model.safetensors``.
        metrics: evaluation metrics, nested as in ``metrics.json`` or flat; shown as a table and in ``model-index``.
        training_config: the run's hyper-parameters (steps, data, seed, ...), without machine paths.
    """
    import yaml

    flat = flat_metrics(metrics or {})
    tiny = config.name == "tiny"
    front: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "instructseg",
        "pipeline_tag": "image-segmentation",
        "tags": ["instructseg", "referring-segmentation", "reasoning-segmentation", "video-segmentation"],
    }
    if tiny:
        front["tags"].append("synthetic")
    numeric = {k: v for k, v in flat.items() if isinstance(v, (int, float))}
    if numeric:
        front["model-index"] = [
            {
                "name": f"instructseg-{config.name}",
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Instructed segmentation"},
                        "metrics": [{"type": k, "name": k, "value": round(float(v), 4)} for k, v in numeric.items()],
                    }
                ],
            }
        ]
    training = dict(training_config or {})
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [
        f"# InstructSeg (`{config.name}` preset)",
        "",
        "One multimodal-LLM model that segments what a text instruction points at, in images and videos: referring "
        "phrases and questions that need reasoning. LoRA is merged into the LLM; "
        f"{num_parameters / 1e6:.1f} M parameters in `{WEIGHTS_NAME}`; export format version {FORMAT_VERSION}.",
        "",
        "## How to load",
        "",
        "```python",
        "from instructseg import InstructSegPredictor",
        "",
        'predictor = InstructSegPredictor.from_pretrained("path/or/hub-id")',
        'pred = predictor.predict_image("photo.jpg", "the dog on the left")  # .mask (H, W) bool, .score, .no_target',
        'video = predictor.predict_video("frames/", "the car turning right")  # .masks (T, H, W)',
        "```",
        "",
        '`instructseg predict --model DIR --input IMAGE|VIDEO|FRAMES_DIR --text "..." --out OUT` does the same from '
        "the command line.",
        "",
        "## Intended use and limitations",
        "",
    ]
    if tiny:
        lines += [
            "This is the **tiny CPU demo model**. Its parts were trained on the built-in synthetic benchmark only "
            "(procedural scenes of coloured shapes, 64 x 64 model inputs). It follows instructions about those shapes "
            "(colour, shape, size, position, motion) and is not meant for natural images.",
        ]
    else:
        lines += [
            "Research use: instructed image and video segmentation. Masks can be wrong or empty for objects, phrasings "
            "or domains far from the training data; a score below the no-target threshold is reported as no target.",
        ]
    lines += ["", "## Evaluation", ""]
    if flat:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in flat.items()]
    else:
        lines.append("No metrics were given at export time.")
    lines += ["", "## Training", ""]
    if training:
        lines += [f"- {k}: `{v}`" for k, v in sorted(training.items())]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Model configuration", "", "```json", json.dumps(config.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)


def check_repo_id(repo_id: str) -> None:
    """Raise ``ValueError`` unless ``repo_id`` is a Hub model repo id ``org/name``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise ValueError(f"--push_to_hub: expected a Hugging Face Hub repo id org/name, got {repo_id!r}.")


def push_to_hub(
    export_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str = ""
) -> str:
    """Upload an export directory to the Hugging Face Hub (``HfApi().create_repo`` + ``upload_folder``).

    Args:
        export_dir: a complete export (checked with :func:`read_export_config` before any network access).
        repo_id: ``org/name`` of the model repo (created if it does not exist).
        private: create the repo as private.
        token: a Hub token (default: the logged-in one, ``HF_TOKEN``).
        commit_message: the upload's commit message (default names the preset).

    Returns:
        The URL of the upload commit.

    Raises:
        ExportFormatError: ``export_dir`` is not a complete export.
        ValueError: ``repo_id`` is not ``org/name``.
        OSError: the Hub refused the upload (one line with the Hub's reason).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    config = read_export_config(export_dir)
    check_repo_id(repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(export_dir),
            repo_type="model",
            commit_message=commit_message or f"Upload instructseg export ({config.name} preset)",
        )
    except HfHubHTTPError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"Upload of {export_dir} to the Hub repo {repo_id!r} failed: {first_line}") from None
    return str(getattr(commit, "commit_url", commit))
