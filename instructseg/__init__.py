"""instructseg: InstructSeg — one multimodal-LLM model for instructed image and video segmentation.

    from instructseg import InstructSegPredictor
    predictor = InstructSegPredictor.from_pretrained("exports/instructseg-tiny")
    result = predictor.predict_video("my_video.gif", "the dog running to the left")

Heavy submodules (Lightning, transformers) are imported on first use of the name that needs them.
"""

from __future__ import annotations

from instructseg.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "InstructSegConfig": "instructseg.config",
    "InstructSeg": "instructseg.modeling.instructseg",
    "InstructSegModule": "instructseg.lit_module",
    "InstructSegPredictor": "instructseg.predictor",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
