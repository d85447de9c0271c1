"""The real tiny model learns: it overfits one fixed batch to mask IoU >= 0.9 within a bounded number of steps."""

import torch

from instructseg.losses import InstructSegCriterion
from instructseg.processing import collate_tokens, tokenize_query


def test_tiny_model_overfits_one_batch(tiny_model):
    torch.manual_seed(0)
    tok = tiny_model.tokenizer
    texts = ["the red square", "the blue circle", "the green triangle on the left", "the yellow star"]
    batch = collate_tokens([tokenize_query(tok, "res", t) for t in texts], tok.pad_token_id)
    images, targets = torch.zeros(4, 3, 64, 64), torch.zeros(4, 64, 64)
    for i, (y0, y1, x0, x1) in enumerate([(5, 25, 5, 25), (30, 50, 30, 60), (40, 60, 2, 20), (10, 30, 35, 55)]):
        targets[i, y0:y1, x0:x1] = 1
        images[i, i % 3, y0:y1, x0:x1] = 2.0
    batch["pixel_values"], batch["clip_pixel_values"] = images, images[:, None]
    criterion = InstructSegCriterion(tiny_model.config.loss)
    optimizer = torch.optim.AdamW(tiny_model.trainable_parameters().values(), lr=1e-3)
    ones = torch.ones(4, dtype=torch.bool)
    best = 0.0
    for _ in range(60):
        out = tiny_model(batch)
        loss = criterion(out.prediction, targets, ones, ones, out.lm_loss)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        selection = tiny_model.select(out.prediction, threshold=0.0)
        pred = torch.nn.functional.interpolate(selection.mask_logits[:, None], size=64, mode="bilinear")[:, 0] > 0
        iou = ((pred & (targets > 0)).sum((1, 2)) / (pred | (targets > 0)).sum((1, 2))).min()
        best = max(best, float(iou))
        if best >= 0.9:
            break
    assert best >= 0.9, f"min IoU over the batch reached only {best:.3f}"
