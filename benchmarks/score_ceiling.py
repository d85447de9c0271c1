"""Which side of the score limits the choice of mask, and how much data would a scorer need? An offline probe.

    CKPT=outputs/main-job/train/lightning_logs/version_0/checkpoints/last.ckpt   # the README main job's
    python benchmarks/score_ceiling.py --checkpoint $CKPT
    python benchmarks/score_ceiling.py --checkpoint $CKPT --train-glob "data/synthetic-8k/train/*.tar" \
        --sizes 3200,8000,17920                       # more training scenes: instructseg synthetic --train 8000

The trained model proposes Q masks per instruction and picks one by its score ``<MLP(query), e>``. Its masks are good
(the best of the Q covers the target well) but the pick is not. This benchmark freezes the model, runs it over
training and validation key frames and records, for every query, three descriptions of the mask it draws:

* ``query states`` — the decoder's final query state (what the model's score reads);
* ``pooled pixel features`` — the pixel decoder's stride-4 features averaged under the query's mask (logit > 0);
* ``colour, area, centre`` — five hand-made numbers: the mean input colour under the query's mask, its area and the
  two coordinates of its centre (no shape);

and two descriptions of the instruction: the LM's mean instruction hidden state (what the model's classifier reads)
and a bag of its words. For every pair it trains the same small scorer from scratch — two 2-layer MLPs whose dot
product scores each query, a softmax cross-entropy towards the query that best covers the target, Adam — on the first
``N`` training samples (``--sizes``) and reports the mean IoU of the query it picks on the validation key frames with
a target, overall and by kind of query (attribute: "the small red triangle"; spatial: "the leftmost circle"; motion:
"the square moving up"; reasoning: world facts). Rows for the model's own pick, a random query and the best query
(the oracle) frame the numbers. One thread is enough for the scorers; the extraction runs the model once per sample.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_quality import VAL_GLOB, _fmt, key_frames, query_ious, region_colours, table  # noqa: E402

from datamodules.synthetic import MOTION_WORDS, SPATIAL  # noqa: E402

QUERY_FEATURES = ("query states", "pooled pixel features", "colour, area, centre")
TEXT_FEATURES = ("LM instruction mean", "bag of words")
KINDS = ("attribute", "spatial", "motion", "reasoning")
_MOTION = re.compile("|".join(re.escape(p) for p in MOTION_WORDS.values()) + r"|\bstays? still\b")
_SPATIAL = re.compile(r"\b(" + "|".join(w for _, _, side, sup in SPATIAL.values() for w in (side, sup)) + r")\b")


def query_kind(query_type: str, text: str) -> str:
    """``attribute`` | ``spatial`` | ``motion`` for referring queries (by their wording, which
    :mod:`datamodules.synthetic` builds from :data:`MOTION_WORDS` and :data:`SPATIAL`), else ``reasoning``."""
    if query_type != "referring":
        return "reasoning"
    if _MOTION.search(text):
        return "motion"
    return "spatial" if _SPATIAL.search(text) else "attribute"


@torch.no_grad()
def extract(model, glob: str, limit: int, batch_size: int = 32) -> dict:
    """Run the frozen model over up to ``limit`` key-frame samples of ``glob``; per sample: each query's three
    descriptions (:data:`QUERY_FEATURES`) ``(n, Q, .)``, its IoU with the target ``(n, Q)``, the LM's mean
    instruction state ``(n, D)``, the model's own pick ``(n,)``, whether there is a target, the text and its kind."""
    seen: dict[str, torch.Tensor] = {}  # score_proj runs once per decoder layer: the last call is the final states
    hooks = [
        model.mask_decoder.score_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("query", i[0])),
        model.fusion.register_forward_hook(lambda m, i, o: seen.__setitem__("text", i[1])),
        model.pixel_decoder.register_forward_hook(lambda m, i, o: seen.__setitem__("pixel", o[0])),
    ]
    out: dict[str, list] = {k: [] for k in (*QUERY_FEATURES, "text", "iou", "pick", "has", "words", "kind")}
    count, start = 0, time.perf_counter()
    for batch in key_frames(model, glob, batch_size):
        if count >= limit:
            break
        prediction = model(batch).prediction
        logits = prediction.mask_logits[-1].float()  # (B, Q, h, w)
        hard = (logits > 0).float()
        colour, area = region_colours(hard, batch["pixel_values"])  # (B, Q, 3), (B, Q) in h x w cells
        area = area.clamp(min=1)
        pooled = torch.einsum("bqhw,bchw->bqc", hard, seen["pixel"].float()) / area[..., None]
        ys, xs = (torch.linspace(0, 1, n) for n in logits.shape[-2:])
        geometry = torch.cat(
            [
                colour,
                (area / hard[0, 0].numel())[..., None],
                (torch.einsum("bqhw,h->bq", hard, ys) / area)[..., None],
                (torch.einsum("bqhw,w->bq", hard, xs) / area)[..., None],
            ],
            -1,
        )
        iou = query_ious(logits, batch["target_mask"])  # (B, Q)
        for name, value in zip(QUERY_FEATURES, (seen["query"].transpose(0, 1), pooled, geometry)):
            out[name].append(value.float())
        out["text"].append(seen["text"].float())
        out["iou"].append(iou.float())
        out["pick"].append(model.select(prediction, threshold=0.0).query)
        out["has"].append(batch["has_target"] & batch["has_mask"])
        out["words"] += list(batch["text"])
        out["kind"] += [query_kind(t, x) for t, x in zip(batch["query_type"], batch["text"])]
        count += len(iou)
        if count // batch_size % 50 == 0:
            print(f"[score ceiling] {glob}: {count} samples ({time.perf_counter() - start:.0f} s)", flush=True)
    for hook in hooks:
        hook.remove()
    if count == 0:
        raise SystemExit(f"score_ceiling: no samples in {glob}")
    return {k: (torch.cat(v)[:limit] if k not in ("words", "kind") else v[:limit]) for k, v in out.items()}


def words(text: str) -> list[str]:
    """The lower-cased runs of letters of ``text`` (the bag of words' tokens)."""
    return re.findall(r"[a-z]+", text.lower())


def bag_of_words(texts: list[str], vocabulary: dict[str, int]) -> torch.Tensor:
    """``(n, V)`` 0/1: which words of ``vocabulary`` (:func:`words`) each text contains."""
    x = torch.zeros(len(texts), len(vocabulary))
    for row, text in enumerate(texts):
        for word in words(text):
            if word in vocabulary:
                x[row, vocabulary[word]] = 1.0
    return x


class Scorer(nn.Module):
    """``score_q = <MLP_q(query_q), MLP_t(text)>``: ``(n, Q, a), (n, b) → (n, Q)``."""

    def __init__(self, query_dim: int, text_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(query_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, query: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nqh,nh->nq", self.query(query), self.text(text))


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero mean, unit variance per feature, with the statistics of ``train`` (all leading dims pooled)."""
    dims = tuple(range(train.ndim - 1))
    mean, std = train.mean(dims), train.std(dims) + 1e-5
    return [(x - mean) / std for x in (train, *others)]


def fit_scorer(
    query: torch.Tensor, text: torch.Tensor, best: torch.Tensor, steps: int, batch: int = 64, seed: int = 0
) -> Scorer:
    """Train a :class:`Scorer` with softmax cross-entropy towards ``best (n,)`` (the best-covering query)."""
    torch.manual_seed(seed)
    scorer = Scorer(query.shape[-1], text.shape[-1])
    optimizer = torch.optim.Adam(scorer.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(best), (batch,), generator=generator)
        loss = F.cross_entropy(scorer(query[idx], text[idx]), best[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return scorer


def picked_iou(iou: torch.Tensor, pick: torch.Tensor, kinds: list[str]) -> list[float]:
    """Mean IoU of the picked query, overall and per :data:`KINDS` (``iou`` and ``pick`` of samples with a target)."""
    got = iou[torch.arange(len(pick)), pick]
    values = [float(got.mean())]
    for kind in KINDS:
        keep = torch.tensor([k == kind for k in kinds])
        values.append(float(got[keep].mean()) if keep.any() else float("nan"))
    return values


def sample_counts(text: str) -> list[int]:
    """``--sizes``: comma-separated positive integers, returned in increasing order."""
    try:
        sizes = sorted(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if sizes[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (.ckpt) of the tiny preset")
    parser.add_argument("--train-glob", default="data/synthetic/train/*.tar", help="shards the scorers train on")
    parser.add_argument("--val-glob", default=VAL_GLOB)
    parser.add_argument("--sizes", type=sample_counts, default="3200", help="comma-separated training-sample counts")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps of every scorer (batch 64)")
    args = parser.parse_args(argv)
    from instructseg.checkpoint import load_training_checkpoint

    sizes = args.sizes
    try:
        model = load_training_checkpoint(args.checkpoint).eval()
        train = extract(model, args.train_glob, sizes[-1])
        if len(train["iou"]) < sizes[-1]:
            raise SystemExit(
                f"score_ceiling: {args.train_glob} has {len(train['iou'])} samples, fewer than {sizes[-1]}."
            )
        val = extract(model, args.val_glob, 10**9)
    except FileNotFoundError as err:  # no checkpoint, or shards that match no file
        parser.error(str(err))
    keep = val["has"]
    val_kinds = [k for k, h in zip(val["kind"], keep.tolist()) if h]
    iou = val["iou"][keep]
    counts = {k: val_kinds.count(k) for k in KINDS}
    generator = torch.Generator().manual_seed(0)
    random_pick = torch.randint(iou.shape[1], (len(iou),), generator=generator)
    rows = [
        ["the model's own pick", "–", *map(_fmt, picked_iou(iou, val["pick"][keep], val_kinds))],
        ["a random query", "–", *map(_fmt, picked_iou(iou, random_pick, val_kinds))],
        ["the best query (oracle)", "–", *map(_fmt, picked_iou(iou, iou.argmax(1), val_kinds))],
    ]
    vocabulary = {w: i for i, w in enumerate(sorted({w for text in train["words"] for w in words(text)}))}
    texts = {
        "LM instruction mean": (train["text"], val["text"]),
        "bag of words": (bag_of_words(train["words"], vocabulary), bag_of_words(val["words"], vocabulary)),
    }
    for n in sizes:
        has = train["has"][:n]
        best = train["iou"][:n][has].argmax(1)
        for query_name in QUERY_FEATURES:
            for text_name in TEXT_FEATURES:
                start = time.perf_counter()
                q_train, q_val = standardize(train[query_name][:n][has], val[query_name][keep])
                t_train, t_val = standardize(texts[text_name][0][:n][has], texts[text_name][1][keep])
                scorer = fit_scorer(q_train, t_train, best, args.steps)
                with torch.no_grad():
                    pick = scorer(q_val, t_val).argmax(1)
                rows.append([f"{query_name} x {text_name}", str(n), *map(_fmt, picked_iou(iou, pick, val_kinds))])
                seconds = time.perf_counter() - start
                print(f"[score ceiling] {rows[-1][0]}, {n} samples: {rows[-1][2]} ({seconds:.0f} s)", flush=True)
    print(
        f"\nmean IoU of the picked query on {len(iou)} validation key frames with a target "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())}):"
    )
    print(table(["scorer (query side x instruction side)", "training samples", "all", *KINDS], rows))


if __name__ == "__main__":
    main()
