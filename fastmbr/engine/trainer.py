"""The training loop: batch → algorithm.loss → backward → fused step; eval on A's validation split each epoch.

Model selection (the weights reported on the test domains) uses A's validation split only, never B.
Metrics stay on the device between log intervals; one host read per interval feeds the progress bar.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from fastmbr.algorithms import build_algorithm
from fastmbr.config import RunConfig
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.distributed import DistInfo, all_reduce_sum, init_from_env
from fastmbr.engine.evaluate import accuracy
from fastmbr.engine.rundir import RunLog, default_run_dir, git_sha, read_json, write_json
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier, channel_stats
from fastmbr.pipelines.datasets import Domains, load_domains
from fastmbr.pipelines.loaders import LoaderConfig, build_loader
from fastmbr.pipelines.types import LabeledImages
from fastmbr.variation.resolve import freeze, variation_from_specs

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastmbrError(f"--device {name}: CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise FastmbrError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def build_optimizer(cfg: RunConfig, params, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = {"fused": True} if device.type == "cuda" else {}
    if o.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fused)
    raise FastmbrError(f"unknown optimizer {o.optimizer!r}; known: adadelta, sgd, adam")


def build_scheduler(cfg: RunConfig, optimizer, total_steps: int):
    """Linear decay from lr to lr_end over the run when lr_end is set (A.2's ImageNet schedule), else constant."""
    o = cfg.optim
    if o.lr_end is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    end = o.lr_end / o.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 + (end - 1.0) * min(step, total_steps) / max(1, total_steps)
    )


@contextmanager
def stop_on_signals(flag: dict):
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits cleanly."""
    handlers = {}

    def request_stop(signum, frame):
        flag["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            handlers[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread
            pass
    try:
        yield flag
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@dataclass
class EpochMeter:
    """Sums kept on the device; ``read`` syncs once."""

    device: torch.device
    loss: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    seen: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.reset()

    def reset(self):
        self.loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = torch.zeros((), device=self.device, dtype=torch.long)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):
        self.loss += loss.detach().double() * y.shape[0]
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += y.shape[0]

    def state(self) -> dict:
        return {"loss": float(self.loss), "correct": int(self.correct), "seen": int(self.seen)}

    def load(self, state: dict):
        self.loss.fill_(state["loss"])
        self.correct.fill_(state["correct"])
        self.seen.fill_(state["seen"])

    def read(self, dist: DistInfo) -> dict:
        totals = torch.stack([self.loss, self.correct.double(), self.seen.double()])
        totals = all_reduce_sum(totals, dist).tolist()
        n = max(totals[2], 1.0)
        return {"loss": totals[0] / n, "acc": 100.0 * totals[1] / n, "n": int(totals[2])}


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool = True, console=None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = resolve_device(cfg.device)
        self.dist = init_from_env(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.on_cuda = self.device.type == "cuda"
        self.autocast = cfg.amp if cfg.amp is not None else self.on_cuda
        self.progress = progress and self.dist.is_main
        self.console = console
        self.log = RunLog(run_dir, enabled=self.dist.is_main)

    # ---- set-up -------------------------------------------------------------------------------------------
    def load_data(self) -> Domains:
        d = self.cfg.data
        return load_domains(d.dataset, d.shift, d.data_dir, image_size=d.image_size, seed=self.cfg.seed,
                            val_fraction=d.val_fraction, limit=d.limit)

    def loader(self, data, train: bool):
        d = self.cfg.data
        size = d.image_size or self.domains.info.image_size
        return build_loader(data, LoaderConfig(
            batch_size=d.batch_size if train else d.eval_batch_size, shuffle=train, drop_last=False,
            augment=d.augment if train else "none", image_size=size, device=self.device, seed=self.cfg.seed,
            num_shards=self.dist.world_size, shard_id=self.dist.rank, num_workers=d.num_workers,
            channels_last=self.channels_last, backend=d.loader,
        ))

    def build_model(self) -> nn.Module:
        train = self.domains.train
        mean, std = channel_stats(train.images) if isinstance(train, LabeledImages) else (IMAGENET_MEAN, IMAGENET_STD)
        size = self.cfg.data.image_size or self.domains.info.image_size
        model = build_classifier(self.cfg.arch, self.domains.num_classes, len(mean), size, mean, std)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def setup(self):
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.on_cuda
        self.domains = self.load_data()
        for note in self.domains.notes:
            self.log(note)
        self.model = self.build_model()
        self.G = variation_from_specs(cfg.algo.models)
        if self.G is not None:
            self.G = freeze(self.G).to(self.device)
        options = {"alpha": cfg.algo.alpha} if cfg.algo.alpha is not None and cfg.algo.name in ("mat", "pgd") else {}
        self.algo = build_algorithm(cfg.algo.name, k=cfg.algo.k, lam=cfg.algo.lam, **options)
        self.algo.check_variation(self.G)
        self.warmup = build_algorithm("erm")
        self.train_loader = self.loader(self.domains.train, train=True)
        self.optimizer = build_optimizer(cfg, self.model.parameters(), self.device)
        self.scheduler = build_scheduler(cfg, self.optimizer, cfg.optim.epochs * len(self.train_loader))
        self.step_model = self.model
        if cfg.compile if cfg.compile is not None else self.on_cuda:
            self.step_model = torch.compile(self.model)
        if self.dist.enabled:
            self.step_model = nn.parallel.DistributedDataParallel(
                self.step_model, device_ids=[self.device.index] if self.on_cuda else None
            )
        self.meter = EpochMeter(self.device)
        self.history: list[dict] = []
        self.best = {"top1": -1.0, "epoch": -1}
        self.position = (0, 0)
        self.nonfinite_total = 0
        self.images_seen, self.train_seconds = 0, 0.0

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def state(self, epoch: int, batch: int) -> dict:
        return {
            "epoch": epoch, "batch": batch, "config": self.cfg.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(), "meter": self.meter.state(),
            "history": self.history, "best": self.best, "nonfinite_total": self.nonfinite_total,
            "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "num_classes": self.domains.num_classes, "delta_dim": self.G.delta_dim if self.G is not None else None,
        }

    def save(self, epoch: int, batch: int) -> None:
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, self.state(epoch, batch), self.cfg.keep_checkpoints)

    def restore(self, state: dict) -> None:
        if state["num_classes"] != self.domains.num_classes:
            raise FastmbrError(f"{self.run_dir}: checkpoint has {state['num_classes']} classes, "
                               f"the data has {self.domains.num_classes}")
        delta_dim = self.G.delta_dim if self.G is not None else None
        if state["delta_dim"] != delta_dim:
            raise FastmbrError(f"{self.run_dir}: checkpoint was trained with δ dimension {state['delta_dim']}, "
                               f"the model of variation has {delta_dim}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.meter.load(state["meter"])
        self.history, self.best = state["history"], state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        self.images_seen, self.train_seconds = state["images_seen"], state["train_seconds"]
        self.position = (state["epoch"], state["batch"])

    # ---- the loop -------------------------------------------------------------------------------------------
    def train_step(self, algo, x: torch.Tensor, y: torch.Tensor) -> bool:
        """One optimisation step; False (and no update) when the loss is not finite."""
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        with amp:
            out = algo.loss(self.step_model, self.G, x, y)
        loss = out["loss"]
        if not bool(torch.isfinite(loss)):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.meter.add(loss, out["logits"], y)
        return True

    def check_nonfinite(self, in_a_row: int, epoch: int, batch: int) -> None:
        if in_a_row > self.cfg.max_nonfinite:
            raise FastmbrError(
                f"loss was NaN/inf for {in_a_row} steps in a row (epoch {epoch + 1}, batch {batch}); stopped. "
                f"The last good checkpoint in {self.run_dir} is intact; try a lower --lr"
            )

    def run_epoch(self, epoch: int, start_batch: int, stop: dict, bar) -> bool:
        """Train one epoch from ``start_batch``; returns False when a signal asked the run to stop."""
        algo = self.warmup if epoch < self.cfg.optim.warmup_epochs else self.algo
        self.model.train()
        self.train_loader.set_epoch(epoch, start_batch)
        in_a_row, tick = 0, time.perf_counter()
        for batch, (x, y) in enumerate(self.train_loader, start=start_batch):
            if self.train_step(algo, x, y):
                in_a_row = 0
            else:
                in_a_row += 1
                self.nonfinite_total += 1
                self.log(f"non-finite loss skipped at epoch {epoch + 1} batch {batch}")
                self.check_nonfinite(in_a_row, epoch, batch)
            self.images_seen += y.shape[0] * self.dist.world_size
            done = batch + 1
            if done % self.cfg.log_every == 0 or done == len(self.train_loader):
                now = time.perf_counter()
                self.train_seconds += now - tick
                tick = now
                bar.update(done, self.meter.read(self.dist), self.images_seen / max(self.train_seconds, 1e-9))
            if self.cfg.checkpoint_every and done % self.cfg.checkpoint_every == 0 and done < len(self.train_loader):
                self.save(epoch, done)
            if stop.get("signal"):
                self.save(epoch, done)
                self.log(f"signal {stop['signal']}: checkpoint written at epoch {epoch + 1} batch {done}; exiting")
                return False
        self.train_seconds += time.perf_counter() - tick
        return True

    def end_epoch(self, epoch: int) -> dict:
        train = self.meter.read(self.dist)
        val = accuracy(self.model, self.loader(self.domains.val, train=False), self.device, self.autocast)
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": train["acc"], "val": val,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(record)
        if val["top1"] > self.best["top1"] and self.dist.is_main:
            self.best = {"top1": val["top1"], "epoch": epoch + 1}
            ckpt.atomic_write(self.run_dir / "best.pt", lambda f: torch.save(self.model.state_dict(), f))
        self.meter.reset()
        self.log(f"epoch {epoch + 1}: loss {train['loss']:.4f} train top-1 {train['acc']:.2f} "
                 f"val top-1 {val['top1']:.2f}")
        return record

    def fit(self, resume_state: dict | None = None) -> dict:
        self.setup()
        if resume_state is not None:
            self.restore(resume_state)
            self.log(f"resumed at epoch {self.position[0] + 1} batch {self.position[1]}")
        start_epoch, start_batch = self.position
        with stop_on_signals({}) as stop, ProgressBar(self.progress, self.cfg, len(self.train_loader)) as bar:
            for epoch in range(start_epoch, self.cfg.optim.epochs):
                bar.start_epoch(epoch, start_batch)
                if not self.run_epoch(epoch, start_batch, stop, bar):
                    raise SystemExit(130 if stop["signal"] == signal.SIGINT else 143)
                self.end_epoch(epoch)
                self.save(epoch + 1, 0)
                start_batch = 0
        return self.finish()

    def finish(self) -> dict:
        if (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(torch.load(self.run_dir / "best.pt", map_location=self.device))
        test = {name: accuracy(self.model, self.loader(data, train=False), self.device, self.autocast)
                for name, data in self.domains.test.items()}
        metrics = {
            "dataset": self.cfg.data.dataset, "shift": self.domains.shift.label, "algorithm": self.cfg.algo.name,
            "test": test, "val": self.history[-1]["val"] if self.history else {},
            "selection": f"best top-1 on A's validation split (epoch {self.best['epoch']})",
            "epochs": self.history, "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds, "nonfinite_skipped": self.nonfinite_total,
            "device": str(self.device), "counts": self.domains.counts(), "commit": git_sha(),
        }
        if self.dist.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
        return metrics


class ProgressBar:
    """A rich progress bar (epoch, loss, accuracy, images/s), or nothing when disabled."""

    def __init__(self, enabled: bool, cfg: RunConfig, total: int):
        self.enabled, self.cfg, self.total = enabled, cfg, total
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, start: int):
        if self.progress is not None:
            desc = f"{self.cfg.algo.name} epoch {epoch + 1}/{self.cfg.optim.epochs}"
            self.task = self.progress.add_task(desc, total=self.total, completed=start, stats="")

    def update(self, done: int, stats: dict, images_per_s: float):
        if self.progress is not None:
            self.progress.update(self.task, completed=done,
                                 stats=f"loss {stats['loss']:.3f} acc {stats['acc']:.1f}% {images_per_s:,.0f} img/s")


def prepare_run_dir(cfg: RunConfig, resume: bool) -> tuple[RunConfig, Path, dict | None]:
    """Create or reopen the run folder; never overwrite a run that exists unless resuming it."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.data.dataset, cfg.algo.name)
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise FastmbrError(f"--resume: {run_dir} holds no run (no config.json)")
        saved = RunConfig.from_dict(read_json(config_path))
        saved.optim.epochs = max(saved.optim.epochs, cfg.optim.epochs) if cfg.optim.epochs else saved.optim.epochs
        saved.device = cfg.device
        return saved, run_dir, ckpt.load_latest(run_dir)
    if config_path.exists():
        raise FastmbrError(f"{run_dir} already holds a run; pass --resume to continue it or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {**cfg.to_dict(), "commit": git_sha()})
    return cfg, run_dir, None


def train(cfg: RunConfig, resume: bool = False, progress: bool = True) -> tuple[dict, Path]:
    """Run (or resume) one training run; returns its metrics and run folder."""
    cfg, run_dir, state = prepare_run_dir(cfg, resume)
    trainer = Trainer(cfg, run_dir, progress=progress)
    return trainer.fit(state), run_dir


def evaluate_run(run_dir: Path, dataset: str | None, shift: str | None, data_dir: str | None,
                 device: str = "auto") -> dict:
    """Score a trained classifier (best.pt) on any dataset's test domains (how transfer is scored)."""
    if not (run_dir / "config.json").exists():
        raise FastmbrError(f"{run_dir}: not a run folder (no config.json)")
    cfg = RunConfig.from_dict({k: v for k, v in read_json(run_dir / "config.json").items() if k != "commit"})
    data = replace(cfg.data, dataset=dataset or cfg.data.dataset, shift=shift if dataset or shift else cfg.data.shift,
                   data_dir=data_dir or cfg.data.data_dir)
    cfg = replace(cfg, data=data, device=device, compile=False)
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.channels_last = False
    trainer.domains = trainer.load_data()
    trainer.model = trainer.build_model()
    weights = ckpt.load_weights(run_dir / "best.pt")
    try:
        trainer.model.load_state_dict(weights)
    except RuntimeError:
        raise FastmbrError(f"{run_dir}/best.pt does not fit {data.dataset}: class count or image size differs") from None
    return {name: accuracy(trainer.model, trainer.loader(d, train=False), trainer.device)
            for name, d in trainer.domains.test.items()}

