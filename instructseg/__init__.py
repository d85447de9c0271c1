"""instructseg: InstructSeg — one multimodal-LLM model for instructed image and video segmentation.

    from instructseg import InstructSegPredictor
    predictor = InstructSegPredictor.from_pretrained("exports/instructseg-tiny")
    result = predictor.predict_video("my_video.gif", "the dog running to the left")

Heavy submodules (Lightning, transformers) are imported on first use of the name that needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "InstructSegConfig": "instructseg.config",
    "InstructSeg": "instructseg.modeling.instructseg",
    "InstructSegModule": "instructseg.lit_module",
    "InstructSegPredictor": "instructseg.predictor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'instructseg' has no attribute {name!r}")
