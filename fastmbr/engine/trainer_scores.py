"""A run's scores: validation each epoch (the best kept as best.pt), then the test domains (``TrainerScores``)."""

from __future__ import annotations

from dataclasses import asdict

import torch

from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.distributed import all_reduce_sum, barrier, broadcast_buffers, gather_objects
from fastmbr.engine.evaluate import accuracy
from fastmbr.engine.logging import log_epoch
from fastmbr.engine.rundir import git_sha, write_json


class TrainerScores:
    """The scoring part of ``Trainer``: the end of each epoch (validation, model selection) and of the run."""

    def evaluate(self, data) -> dict:
        """Top-1/top-5 over a whole split: each rank scores its strided share, the counts are summed."""
        loader = self.loader(data, train=False)
        r = accuracy(self.model, loader, self.device, self.autocast)
        self.note_unreadable(loader)
        counts = [round(r["top1"] * r["n"] / 100), round(r["top5"] * r["n"] / 100), r["n"]] if r["n"] else [0, 0, 0]
        top1, top5, n = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=self.device),
                                       self.dist).tolist()
        if n == 0:
            return {"top1": float("nan"), "top5": float("nan"), "n": 0}
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}

    def end_epoch(self, epoch: int) -> dict:
        train = self.meter.read(self.dist)
        self.note_unreadable(self.train_loader)
        broadcast_buffers(self.model, self.dist)
        val = self.evaluate(self.domains.val)
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": train["acc"], "val": val,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(record)
        if val["top1"] > self.best["top1"] or self.algo.select_last:
            self.best = {"top1": val["top1"], "epoch": epoch + 1}
            if self.dist.is_main:
                ckpt.atomic_write(self.run_dir / "best.pt", lambda f: torch.save(self.model.state_dict(), f))
        self.meter.reset()
        self.log(f"epoch {epoch + 1}: loss {train['loss']:.4f} train top-1 {train['acc']:.2f} "
                 f"val top-1 {val['top1']:.2f}")
        log_epoch(self, record)  # history.csv, TensorBoard
        return record

    def finish(self) -> dict:
        barrier(self.dist)  # rank 0 wrote best.pt; every rank reads it
        if (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(ckpt.load_weights(self.run_dir / "best.pt"))
        test = {name: self.evaluate(data) for name, data in self.domains.test.items()}
        metrics = {
            "dataset": self.cfg.data.dataset, "shift": self.domains.shift.label, "algorithm": self.cfg.algo.name,
            "test": test, "val": self.history[-1]["val"] if self.history else {},
            "selection": (f"the last epoch ({self.best['epoch']}): {self.algo.name} adapts to B, which A's "
                          f"validation split cannot judge" if self.algo.select_last else
                          f"best top-1 on A's validation split (epoch {self.best['epoch']})"),
            "epochs": self.history, "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds, "nonfinite_skipped": self.skipped_total(),
            "unreadable_files": sorted({p for paths in gather_objects(self.unreadable, self.dist) for p in paths}),
            "device": str(self.device), "world_size": self.dist.world_size,
            "global_batch": self.cfg.data.batch_size, "options": asdict(self.options),
            "counts": self.domains.counts(), "commit": git_sha() if self.dist.is_main else None,
        }
        if self.dist.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
        return metrics
