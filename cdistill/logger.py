"""Metrics to a JSONL file in the run directory (what the report reads) and, mirrored, to wandb."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

from omegaconf import OmegaConf


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg, resume: bool = False):
        self.path = run_dir / "metrics.jsonl"
        self.run = None
        wb = cfg.logging.wandb
        if wb.enabled:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            # one wandb run per run directory: a resumed run continues the same wandb run
            id_file = run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.run = wandb.init(
                project=wb.project, entity=wb.entity, mode=wb.mode, dir=str(run_dir), name=run_dir.name,
                config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous", id=run_id,
                resume="allow",
            )

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record.get("step"))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
