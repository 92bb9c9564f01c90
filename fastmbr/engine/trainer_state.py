"""A run's checkpoint: what ``Trainer`` saves at step boundaries and restores on resume (``TrainerState``)."""

from __future__ import annotations

from dataclasses import asdict

from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.distributed import gather_objects
from fastmbr.errors import FastmbrError


class TrainerState:
    """The checkpoint part of ``Trainer``: the state of every rank gathered and saved by rank 0, and restored."""

    def state(self, epoch: int, batch: int) -> dict:
        """The checkpoint. A collective under torchrun: every rank's RNG states and epoch sums are gathered."""
        per_rank = gather_objects({"rng": ckpt.rng_state(), "meter": self.meter.state()}, self.dist)
        return {
            "epoch": epoch, "batch": batch, "config": self.cfg.to_dict(), "options": asdict(self.options),
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": [r["rng"] for r in per_rank], "meter": [r["meter"] for r in per_rank],
            "history": self.history, "best": self.best, "nonfinite_total": self.skipped_total(),
            "images_seen": self.images_seen, "train_seconds": self.train_seconds, "unreadable": self.unreadable,
            "algo": self.algo.state_dict(), "own_optimizer": self.on_own_optimizer,
            "num_classes": self.domains.num_classes, "delta_dim": self.G.delta_dim if self.G is not None else None,
        }

    def skipped_total(self) -> int:
        return self.skipped.read()[0] if self.skip_on_device else self.nonfinite_total

    def save(self, epoch: int, batch: int) -> None:
        """Every rank calls this at the same step; rank 0 alone writes."""
        state = self.state(epoch, batch)
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, state, self.cfg.keep_checkpoints)

    def restore(self, state: dict) -> None:
        if state["num_classes"] != self.domains.num_classes:
            raise FastmbrError(f"{self.run_dir}: checkpoint has {state['num_classes']} classes, "
                               f"the data has {self.domains.num_classes}")
        delta_dim = self.G.delta_dim if self.G is not None else None
        if state["delta_dim"] != delta_dim:
            raise FastmbrError(f"{self.run_dir}: checkpoint was trained with δ dimension {state['delta_dim']}, "
                               f"the model of variation has {delta_dim}")
        self.model.load_state_dict(state["model"])
        if state.get("own_optimizer"):
            self.use_own_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.algo.load_state_dict(state.get("algo", {}), self.model, self.device)
        self.restore_rank_parts(state)
        self.history, self.best = state["history"], state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        self.unreadable = list(state.get("unreadable", []))
        self.skipped.counts[0] = float(self.nonfinite_total)
        self.images_seen, self.train_seconds = state["images_seen"], state["train_seconds"]
        self.position = (state["epoch"], state["batch"])

    def restore_rank_parts(self, state: dict) -> None:
        """This rank's RNG states and epoch sums; a rank the checkpoint did not have starts fresh ones."""
        rng = ckpt.rng_state_of_rank(state["rng"], self.dist.rank)
        meters = state["meter"] if isinstance(state["meter"], list) else [state["meter"]]
        if rng is not None:
            ckpt.set_rng_state(rng)
        if self.dist.rank < len(meters):
            self.meter.load(meters[self.dist.rank])
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            self.log(f"checkpoint written by {saved_world} process(es), resumed on {self.dist.world_size}: "
                     f"the run continues, but not bit-identically to an uninterrupted one")
