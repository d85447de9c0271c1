"""The vocabularies and numbers shared by the model, the data pipeline, the predictor, evaluation and the CLI.

One home per name: everything else imports from here (this module imports nothing from the project).
"""

from __future__ import annotations

#: Every task of the shard schema and the prompt templates.
TASKS = ("res", "reasonseg", "rvos", "reasonvos", "vqa")
#: Tasks whose inputs are single images (one mask per instruction).
IMAGE_TASKS = ("res", "reasonseg")
#: Tasks whose inputs are videos (one mask per frame).
VIDEO_TASKS = ("rvos", "reasonvos")

#: Query types of the shard schema, in ReVOS ``type_id`` order (0 referring, 1 reasoning, 2 no-target).
QUERY_TYPES = ("referring", "reasoning", "no_target")
#: ReVOS ``type_id`` → query type.
REVOS_TYPE_NAMES = dict(enumerate(QUERY_TYPES))
#: Query type → ReVOS ``type_id``.
REVOS_TYPE_IDS = {name: i for i, name in enumerate(QUERY_TYPES)}

#: Video inference strategies of :class:`instructseg.InstructSegPredictor`.
STRATEGIES = ("per_frame", "shared", "naive", "keyframe", "segments")

#: Label value that the text loss ignores.
IGNORE_INDEX = -100
#: Placeholder expanded to the OVP latents (R x Q_r tokens).
OVP_TOKEN = "<ovp>"
#: Placeholder expanded to the key frame's N SigLIP tokens.
IMAGE_TOKEN = "<image>"
#: Placeholder expanded to the Q mask queries.
SEG_QUERY_TOKEN = "<seg>"
#: The answer token that closes a segmentation answer.
SEG_ANSWER_TOKEN = "[SEG]"
#: Tokens the tokenizer gains; the model's added-token table has one row per entry, in this order.
SPECIAL_TOKENS = (OVP_TOKEN, IMAGE_TOKEN, SEG_QUERY_TOKEN, SEG_ANSWER_TOKEN)

#: Mask-branch (Swin) normalisation on a 0-255 scale (Mask2Former / ImageNet).
MASK_PIXEL_MEAN = (123.675, 116.28, 103.53)
MASK_PIXEL_STD = (58.395, 57.12, 57.375)
#: SigLIP normalisation on a 0-1 scale.
SIGLIP_PIXEL_MEAN = (0.5, 0.5, 0.5)
SIGLIP_PIXEL_STD = (0.5, 0.5, 0.5)
