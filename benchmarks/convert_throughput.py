"""Throughput of the dataset converters on fixtures of realistic size.

    python benchmarks/convert_throughput.py [--images 200] [--videos 20] [--frames 30] [--workers 1 2]

Writes a RefCOCO-style fixture (``--images`` 640x480 COCO images, four annotations each: 24-sided polygons, a
two-part polygon and RLEs; one to three sentences per ref) and a ReVOS-style fixture (``--videos`` videos of
``--frames`` 640x480 frames, three objects, mask_dict RLEs, foreground masks, five expressions per video) in a
temporary folder (``tests/fixtures/official_layouts.py``), converts them with each ``--workers`` setting and prints
records/s and frames/s, plus the time of a re-run that finds every shard finished (resume). Last, it converts the
RefCOCO fixture with ``--rasterizer cv2`` too and prints how InstructSeg's cv2 masks differ from the default
pycocotools masks on its polygon annotations (area ratio, IoU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datamodules.convert import Converter, RefCOCOConverter, ReVOSConverter, convert_dataset
from datamodules.shards import iter_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the official-layout fixture writers
from fixtures.official_layouts import write_refcoco, write_revos  # noqa: E402

HEIGHT, WIDTH = 480, 640


def _time(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _run(name: str, make: Callable[[], Converter], out: Path, workers: int) -> list[str]:
    """One table row: convert into ``out``, then re-run (everything resumed)."""
    summary: dict = {}

    def convert() -> None:
        summary.update(convert_dataset(make(), out, workers=workers, progress=False, echo=None))

    seconds = _time(convert)
    resume = _time(lambda: convert_dataset(make(), out, workers=workers, progress=False, echo=None))
    total = summary["total"]
    size = sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20
    return [
        name,
        str(workers),
        str(total["records"]),
        str(total["frames"]),
        str(total["queries"]),
        f"{size:.0f}",
        f"{seconds:.2f}",
        f"{total['records'] / seconds:.1f}",
        f"{total['frames'] / seconds:.1f}",
        f"{resume:.2f}",
    ]


def rasterizer_gap(coco_out: Path, cv2_out: Path) -> str:
    """How the cv2 masks of the polygon objects differ from the pycocotools masks (the RLE objects are equal)."""
    coco = {r.key: r for r in iter_records(str(coco_out / "refcoco-*.tar"))}
    areas, ious = [], []
    for record in iter_records(str(cv2_out / "refcoco-*.tar")):
        for object_id in record.meta["objects"]:
            theirs, ours = coco[record.key].object_mask(object_id, 0), record.object_mask(object_id, 0)
            if theirs.any() and not np.array_equal(theirs, ours):
                areas.append((int(theirs.sum()), int(ours.sum())))
                ious.append((theirs & ours).sum() / (theirs | ours).sum())
    coco_area, cv2_area = (sum(a[i] for a in areas) for i in (0, 1))
    return (
        f"rasterizer cv2 vs pycocotools on {len(ious)} differing polygon masks: area {cv2_area / coco_area - 1:+.2%}, "
        f"IoU mean {np.mean(ious):.4f} (min {np.min(ious):.4f}, max {np.max(ious):.4f})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="RefCOCO-style images")
    parser.add_argument("--videos", type=int, default=20, help="ReVOS-style videos")
    parser.add_argument("--frames", type=int, default=30, help="frames per video")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker settings to compare")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        made = _time(
            lambda: write_refcoco(
                tmp_path / "refer", num_images=args.images, height=HEIGHT, width=WIDTH, realistic=True
            )
        )
        made_video = _time(
            lambda: write_revos(
                tmp_path / "ReVOS", videos={"train": args.videos}, num_frames=args.frames, height=HEIGHT, width=WIDTH
            )
        )
        print(
            f"fixtures: refcoco {args.images} images in {made:.1f} s; revos {args.videos} videos x {args.frames} "
            f"frames in {made_video:.1f} s ({WIDTH}x{HEIGHT})"
        )
        rows = []
        for workers in args.workers:
            refcoco = _run(
                "refcoco",
                lambda: RefCOCOConverter(tmp_path / "refer" / "refcoco"),
                tmp_path / f"out-refcoco-{workers}",
                workers,
            )
            revos = _run(
                "revos", lambda: ReVOSConverter(tmp_path / "ReVOS"), tmp_path / f"out-revos-{workers}", workers
            )
            rows += [refcoco, revos]
        convert_dataset(
            RefCOCOConverter(tmp_path / "refer" / "refcoco", rasterizer="cv2"),
            tmp_path / "out-refcoco-cv2",
            progress=False,
            echo=None,
        )
        gap = rasterizer_gap(tmp_path / f"out-refcoco-{args.workers[0]}", tmp_path / "out-refcoco-cv2")
    header = [
        "dataset",
        "workers",
        "records",
        "frames",
        "queries",
        "MiB",
        "seconds",
        "records/s",
        "frames/s",
        "resume s",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    print(gap)


if __name__ == "__main__":
    main()
