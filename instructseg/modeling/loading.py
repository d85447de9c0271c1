"""Loading of the three pretrained parts through ``transformers``' ``from_pretrained``.

Every pretrained part (SigLIP, the causal LM + tokenizer, Mask2Former with its Swin backbone) loads from a Hugging
Face id or a local directory. A missing or wrong local path gives one :class:`PretrainedLoadError` that names the
path, what was expected there and how to get it. ``weights=False`` builds the same architecture from the stored
``config.json`` only (used when an export's single safetensors file supplies every weight).

:func:`resolve_model_path` turns the ``name_or_path`` of an export (or training checkpoint) into a local path: an
existing path as it is, a Hugging Face Hub id ``org/name`` through ``huggingface_hub.snapshot_download`` (cached;
``HF_HUB_OFFLINE=1`` reads the cache only), anything else is an error at once.

:func:`full_size_hf_configs` holds the architecture configs of the paper's checkpoints so the full-size model can be
built on the ``meta`` device without any download (parameter counts, memory planning).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PART_HINTS = {
    "siglip": ("a SigLIP checkpoint (config.json + model.safetensors)", "google/siglip-so400m-patch14-384"),
    "llm": ("a causal LM checkpoint with its tokenizer files", "microsoft/phi-2"),
    "mask2former": (
        "a Mask2Former checkpoint with a Swin backbone (config.json + model.safetensors)",
        "facebook/mask2former-swin-base-IN21k-coco-panoptic",
    ),
}


class PretrainedLoadError(FileNotFoundError):
    """A pretrained part could not be loaded from the configured path."""


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
LOCAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin", ".json", ".yaml", ".yml")


class ModelNotFoundError(FileNotFoundError):
    """A model name is neither a local path nor a Hub id that could be fetched."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is read as a Hugging Face Hub id rather than a local path.

    True for ``org/name`` (one slash, Hub characters, no file suffix such as ``.ckpt``) that is not an existing
    local path.
    """
    return (
        HUB_ID.fullmatch(name) is not None
        and not any(token in name for token in ("..", "--"))
        and not name.lower().endswith(LOCAL_SUFFIXES)
        and not Path(name).exists()
    )


def resolve_model_path(name_or_path: str | Path) -> Path:
    """The local path of an export directory or training checkpoint given by path or Hugging Face Hub id.

    Args:
        name_or_path: an existing local path (returned as is, ``~`` expanded), or a Hub id ``org/name``
            (see :func:`is_hub_id`) downloaded with ``huggingface_hub.snapshot_download`` into the Hub cache
            (``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only the cache is read.

    Returns:
        The local path (for a Hub id, the snapshot directory in the cache).

    Raises:
        ModelNotFoundError: no such local path and not a Hub id (raised at once, without any network access),
            or a Hub id that is neither in the cache nor downloadable.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise ModelNotFoundError(
            f"No export directory or training checkpoint at {path}, and {name!r} is not a Hugging Face Hub id "
            "(org/name). Check the path, or give a Hub id."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(
            f"No export directory or training checkpoint at {path}, and the Hugging Face Hub repo {name!r} could "
            f"not be fetched ({first_line}). Check the path or the repo id; offline, download the repo once "
            "beforehand (it is cached) and set HF_HUB_OFFLINE=1 to read the cache only."
        ) from None


def _looks_local(path: str) -> bool:
    """A pretrained part's path is local unless it is a Hub id whose ``org`` is not a local folder either.

    (``transformers`` retries a missing Hub id for ~30 s offline, so a mistyped ``tiny/llm`` must be caught here.)
    """
    return not is_hub_id(path) or Path(path.split("/")[0]).exists()


def check_pretrained_dir(path: str, part: str, need_weights: bool = True, marker: str = "config.json") -> None:
    """Raise :class:`PretrainedLoadError` if ``path`` is a local directory that cannot hold ``part``.

    Hub ids (``org/name`` that is not an existing local path) are left to ``from_pretrained``. ``marker`` is the
    file that must be there (``tokenizer_config.json`` for a tokenizer alone).
    """
    what, hub_id = PART_HINTS[part]
    if not _looks_local(path):
        return
    local = Path(path).expanduser()
    hint = (
        f"Expected {what} for `{part}` at {local}. Download it once (e.g. `huggingface-cli download {hub_id} "
        f"--local-dir {local}`); for the tiny preset run `instructseg make-tiny --out <dir>` and pass "
        f"`--model.pretrained_root <dir>` (Python: `pretrained_root=<dir>`)."
    )
    if not local.is_dir():
        raise PretrainedLoadError(f"No directory at {local}. {hint}")
    if not (local / marker).is_file():
        raise PretrainedLoadError(f"{local} has no {marker}. {hint}")
    if need_weights and not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        raise PretrainedLoadError(f"{local} has no weight files (*.safetensors). {hint}")


def load_part(model_cls: type, path: str, part: str, weights: bool = True, **kwargs: Any):
    """``model_cls.from_pretrained(path)`` with a clear error, or an uninitialised build from its config.

    Args:
        model_cls: a ``transformers`` model class (``SiglipVisionModel``, ``AutoModelForCausalLM``, ...).
        path: hub id or local directory.
        part: ``"siglip"``, ``"llm"`` or ``"mask2former"`` (for messages).
        weights: load weights (True) or only build the architecture from the stored config (False).
    """
    from transformers import AutoConfig

    check_pretrained_dir(path, part, need_weights=weights)
    try:
        if weights:
            return model_cls.from_pretrained(path, **kwargs)
        config = AutoConfig.from_pretrained(path)
        build = getattr(model_cls, "from_config", None) or model_cls._from_config
        return build(config)
    except OSError as err:
        what, hub_id = PART_HINTS[part]
        raise PretrainedLoadError(f"Could not load {what} for `{part}` from {path!r} ({hub_id} is the default): {err}")


def load_tokenizer(path: str):
    """``AutoTokenizer.from_pretrained(path)`` with the same error reporting as :func:`load_part`."""
    from transformers import AutoTokenizer

    check_pretrained_dir(path, "llm", need_weights=False, marker="tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise PretrainedLoadError(f"Could not load the tokenizer for `llm` from {path!r}: {err}")


def full_size_hf_configs() -> dict[str, Any]:
    """Architecture configs of SigLIP-so400m/384, Phi-2 and Mask2Former Swin-B (COCO panoptic, 200 queries)."""
    from transformers import Mask2FormerConfig, PhiConfig, SiglipVisionConfig, SwinConfig

    siglip = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )
    phi2 = PhiConfig(
        vocab_size=51200,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        partial_rotary_factor=0.4,
    )
    swin_b = SwinConfig(
        image_size=384,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    mask2former = Mask2FormerConfig(backbone_config=swin_b, num_queries=200, use_pretrained_backbone=False)
    return {"siglip": siglip, "llm": phi2, "mask2former": mask2former}
