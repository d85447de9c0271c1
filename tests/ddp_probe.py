"""A Lightning callback used by the DDP test: records each rank's batch keys and final trainable weights."""

import hashlib
import json
import os
from pathlib import Path

import lightning as L


class DDPProbe(L.Callback):
    def __init__(self) -> None:
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys += [f"{k}/{q}" for k, q in zip(batch["key"], batch["query_id"])]

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, param in sorted(pl_module.model.trainable_parameters().items()):
            digest.update(name.encode())
            digest.update(param.detach().cpu().numpy().tobytes())
        out = Path(os.environ["DDP_PROBE_DIR"]) / f"probe-{trainer.global_rank}.json"
        out.write_text(json.dumps({"keys": self.keys, "weights": digest.hexdigest()}))
