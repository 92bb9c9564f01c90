"""Train MUNIT on two unpaired image domains (paper Table 8) and save the A→B half as G.

Per iteration (both directions, as MUNIT): encode x_A and x_B, reconstruct them (λ_x = 10, L1), translate with
styles drawn from the prior, re-encode the translations (λ_c = λ_s = 1, L1), LSGAN losses from 3-scale critics
(weight 1); optionally MUNIT's explicit cycle term (``recon_x_cyc``, off by default as in MUNIT): decode the
re-encoded content with each image's own style and ask for the image back (L1); optionally our label-preserving
term (``semantic``, off by default; see semantic.py); then one critic step on the same translations, detached (this
skips MUNIT's second generator forward pass). Adam(lr, β = (0.5, 0.999), weight decay 1e-4) with step decay
γ = 0.5 every ``lr_step`` iterations.

``snapshots`` keeps G at chosen iterations (``G_DIR/snapshots/iter_NNNNNNN``, each a G_DIR of its own) for the
paper's Figure 8: robustness against the number of MUNIT iterations.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.munit.io import CHECKPOINT, load_checkpoint, save_checkpoint, save_variation
from fastmbr.engine.resume_check import check_same_munit_run, refuse_to_overwrite_g
from fastmbr.engine.validate import validate_munit
from fastmbr.variation.munit.networks import (Generator, MultiScaleDiscriminator, MunitArch, arch_preset, fit_critics,
                                              init_weights)
from fastmbr.variation.munit.semantic import accuracy, semantic_classifier, semantic_loss
from fastmbr.variation.munit.variation import PRIORS, MunitVariation, sample_prior

# Per size preset: iterations, learning rate and step-decay period used when the config leaves them None.
# tiny raises the lr from Table 8's 1e-4 to 1e-3 so that a 32 px model converges within minutes on 2 CPU cores.
PRESET_SCHEDULE = {
    "tiny": {"iters": 1000, "lr": 1e-3, "lr_step": 500},
    "mid": {"iters": 4000, "lr": 2e-4, "lr_step": 2000},
    "base": {"iters": 100_000, "lr": 1e-4, "lr_step": 100_000},
}


@dataclass
class MunitTrainConfig:
    """MUNIT training; None means the size preset's value (PRESET_SCHEDULE)."""

    size: str = "tiny"
    style_dim: int = 8
    iters: int | None = None
    batch_size: int = 16  # Table 8 uses 1; 16 keeps CPU cores busy and is as stable here
    lr: float | None = None
    lr_step: int | None = None
    gamma: float = 0.5
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4
    recon_x: float = 10.0
    recon_c: float = 1.0
    recon_s: float = 1.0
    recon_x_cyc: float = 0.0  # MUNIT's recon_x_cyc_w: x → translated → back must return x (keeps content)
    semantic: float = 0.0  # ours: CE of a frozen A-classifier on G(x_A, δ) against y_A (CyCADA's semantic loss)
    semantic_epochs: int = 20  # epochs of that classifier on A's labelled training split (batch 32)
    snapshots: tuple[int, ...] = ()  # iterations at which G is also kept under snapshots/
    gan: float = 1.0
    prior: str = "gaussian"
    bound: float = 2.0
    checkpoint_every: int = 500
    sample_rows: int = 8
    sample_k: int = 8
    seed: int = 0
    source: dict = field(default_factory=dict)  # what the domains are: dataset, shift, domain names, folders
    arch_overrides: dict = field(default_factory=dict)  # e.g. {"dis_layers": 2} for tiny test images

    def resolved(self) -> "MunitTrainConfig":
        if self.size not in PRESET_SCHEDULE:
            raise FastmbrError(f"unknown MUNIT size {self.size!r}; known: {', '.join(PRESET_SCHEDULE)}")
        d = PRESET_SCHEDULE[self.size]
        cfg = replace(self, iters=self.iters or d["iters"], lr=self.lr or d["lr"], lr_step=self.lr_step or d["lr_step"])
        for name in ("iters", "batch_size", "lr_step", "checkpoint_every", "semantic_epochs"):
            if getattr(cfg, name) < 1:
                raise FastmbrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
        for name in ("semantic",):  # --cycle is checked by validate_munit
            value = getattr(cfg, name)
            if not (math.isfinite(value) and value >= 0):
                raise FastmbrError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not (math.isfinite(cfg.bound) and cfg.bound > 0):
            raise FastmbrError(f"--bound must be a finite number > 0, got {cfg.bound}")
        if cfg.prior not in PRIORS:
            raise FastmbrError(f"--prior must be one of {', '.join(PRIORS)}, got {cfg.prior!r}")
        bad = [s for s in cfg.snapshots if not 1 <= s <= cfg.iters]
        if bad:
            raise FastmbrError(f"--snapshots must lie in 1..{cfg.iters} (the iterations), got {bad}")
        return replace(cfg, snapshots=tuple(sorted(set(int(s) for s in cfg.snapshots))))

    def arch(self, channels: int, image_size: int | None = None) -> MunitArch:
        """The preset's networks, critics fitted to ``image_size`` (fit_critics), then ``arch_overrides``."""
        arch = arch_preset(self.size, channels, self.style_dim)
        arch = fit_critics(arch, image_size) if image_size is not None else arch
        return replace(arch, **self.arch_overrides)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


class MunitTrainer(nn.Module):
    """Both auto-encoders, both critics, their optimisers and schedules."""

    def __init__(self, arch: MunitArch, cfg: MunitTrainConfig, semantic_net: nn.Module | None = None):
        super().__init__()
        self.arch, self.cfg = arch, cfg
        self.__dict__["semantic_net"] = semantic_net  # frozen, not ours to train or checkpoint: not a submodule
        self.semantic_top1: float | None = None  # its top-1 on A's labelled training split, for G.json
        self.gen_a, self.gen_b = Generator(arch), Generator(arch)
        self.dis_a, self.dis_b = MultiScaleDiscriminator(arch), MultiScaleDiscriminator(arch)
        for g in (self.gen_a, self.gen_b):
            init_weights(g, "kaiming")
        for d in (self.dis_a, self.dis_b):
            init_weights(d, "gaussian")
        low = torch.full((arch.style_dim,), -cfg.bound)
        self.register_buffer("style_low", low, persistent=False)
        self.register_buffer("style_high", -low, persistent=False)
        opt = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.gen_params = [*self.gen_a.parameters(), *self.gen_b.parameters()]
        self.dis_params = [*self.dis_a.parameters(), *self.dis_b.parameters()]
        self.opt_gen = torch.optim.Adam(self.gen_params, **opt)
        self.opt_dis = torch.optim.Adam(self.dis_params, **opt)
        self.sched_gen = torch.optim.lr_scheduler.StepLR(self.opt_gen, cfg.lr_step, cfg.gamma)
        self.sched_dis = torch.optim.lr_scheduler.StepLR(self.opt_dis, cfg.lr_step, cfg.gamma)

    def styles(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample_prior(self.cfg.prior, self.style_low, self.style_high, (n,), generator)

    def generator_losses(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator,
                         ya: torch.Tensor | None = None):
        """All generator loss terms, and the two translations (for the critic step); ``ya``: A's labels, for the
        semantic term."""
        s_a, s_b = self.styles(xa.shape[0], generator), self.styles(xb.shape[0], generator)
        c_a, s_a_own = self.gen_a.encode(xa)
        c_b, s_b_own = self.gen_b.encode(xb)
        xa_rec, x_ba = self.gen_a.decode_batched((c_a, c_b), (s_a_own, s_a))  # one decoder call per generator
        xb_rec, x_ab = self.gen_b.decode_batched((c_b, c_a), (s_b_own, s_b))
        c_b_rec, s_a_rec = self.gen_a.encode(x_ba)
        c_a_rec, s_b_rec = self.gen_b.encode(x_ab)
        losses = {
            "x": l1(xa_rec, xa) + l1(xb_rec, xb),
            "c": l1(c_a_rec, c_a) + l1(c_b_rec, c_b),
            "s": l1(s_a_rec, s_a) + l1(s_b_rec, s_b),
            "gan": self.dis_a.loss_generator(x_ba) + self.dis_b.loss_generator(x_ab),
        }
        if self.cfg.recon_x_cyc > 0:
            losses["cyc"] = l1(self.gen_a.decode(c_a_rec, s_a_own), xa) + l1(self.gen_b.decode(c_b_rec, s_b_own), xb)
        if self.cfg.semantic > 0 and self.semantic_net is not None and ya is not None:
            losses["sem"] = semantic_loss(self.semantic_net, x_ab, ya)
        return losses, x_ab, x_ba

    def step(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator,
             ya: torch.Tensor | None = None) -> dict[str, float]:
        """One generator update then one critic update; returns the loss terms."""
        c = self.cfg
        for p in self.dis_params:
            p.requires_grad_(False)
        losses, x_ab, x_ba = self.generator_losses(xa, xb, generator, ya)
        total = c.recon_x * losses["x"] + c.recon_c * losses["c"] + c.recon_s * losses["s"] + c.gan * losses["gan"]
        total = total + c.recon_x_cyc * losses.get("cyc", 0.0) + c.semantic * losses.get("sem", 0.0)
        self.opt_gen.zero_grad(set_to_none=True)
        total.backward()
        self.opt_gen.step()
        for p in self.dis_params:
            p.requires_grad_(True)
        dis = c.gan * (self.dis_a.loss_critic(x_ba.detach(), xa) + self.dis_b.loss_critic(x_ab.detach(), xb))
        self.opt_dis.zero_grad(set_to_none=True)
        dis.backward()
        self.opt_dis.step()
        self.sched_gen.step()
        self.sched_dis.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "dis": float(dis.detach())}

    def variation(self, image_size: int) -> MunitVariation:
        """A frozen copy of the A→B inference parts (content encoder of A, decoder of B)."""
        g = MunitVariation(self.arch, image_size, self.cfg.prior, self.cfg.bound).to(self.style_low.device)
        g.content_encoder.load_state_dict(self.gen_a.content.state_dict())
        g.decoder.load_state_dict(self.gen_b.decoder.state_dict())
        return g.freeze()


def check_domains(domain_a: torch.Tensor, domain_b: torch.Tensor, arch: MunitArch) -> int:
    """Both uint8 ``[N, C, H, W]`` with the same square C×H×W, large enough for the critics; returns H."""
    for name, d in (("domain A", domain_a), ("domain B", domain_b)):
        if d.dtype != torch.uint8 or d.dim() != 4 or d.shape[0] == 0:
            raise FastmbrError(f"{name}: need a non-empty uint8 tensor [N, C, H, W], got {d.dtype} {tuple(d.shape)}")
    if domain_a.shape[1:] != domain_b.shape[1:]:
        raise FastmbrError(f"domains differ in image shape: A {tuple(domain_a.shape[1:])}, "
                           f"B {tuple(domain_b.shape[1:])}")
    _, _, h, w = domain_a.shape
    if h != w:
        raise FastmbrError(f"MUNIT needs square images, got {h}×{w}")
    if h < arch.min_image_size() or h % 2**arch.n_downsample:
        raise FastmbrError(f"images of {h} px are too small or not divisible by {2**arch.n_downsample} for this "
                           f"MUNIT size (its critics need >= {arch.min_image_size()} px)")
    return h


def to_signed(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return batch.float() * (2.0 / 255.0) - 1.0


def save_grid(g: MunitVariation, xa: torch.Tensor, xb: torch.Tensor, deltas: torch.Tensor, path: Path) -> None:
    """Rows: inputs from A; columns: the input, G(x, δ_j) for k draws, a real B image."""
    from torchvision.utils import save_image

    with torch.no_grad():
        varied = g.expand(xa, deltas)  # [k, R, C, H, W]
    cols = [xa.unsqueeze(1), varied.transpose(0, 1), xb.unsqueeze(1)]
    grid = torch.cat(cols, dim=1)  # [R, k + 2, C, H, W]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.flatten(0, 1).cpu(), str(path), nrow=grid.shape[1], padding=1)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("MUNIT"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), disable=not enabled)


def _format_losses(avg: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in avg.items())


def train_munit(domain_a: torch.Tensor, domain_b: torch.Tensor, cfg: MunitTrainConfig, out_dir: str | Path,
                device: str | torch.device = "cpu", progress: bool = True, resume: bool = False,
                labels_a: torch.Tensor | None = None, num_classes: int | None = None) -> MunitVariation:
    """Train on uint8 ``[N, C, H, W]`` domains; writes G, checkpoints and sample grids into out_dir; returns G.

    ``labels_a`` (and ``num_classes``) label domain A's images: needed by the semantic term only."""
    cfg = cfg.resolved()
    out_dir, device = Path(out_dir), torch.device(device)
    arch = cfg.arch(domain_a.shape[1] if domain_a.dim() == 4 else 3, domain_a.shape[-1] if domain_a.dim() == 4 else None)
    size = check_domains(domain_a, domain_b, arch)
    if cfg.semantic > 0 and (labels_a is None or num_classes is None or len(labels_a) != len(domain_a)):
        raise FastmbrError("--semantic needs domain A's labels (train G from a DATASET, not --a-dir/--b-dir)")
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FastmbrError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    validate_munit(cfg)
    refuse_to_overwrite_g(out_dir, resume)
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        check_same_munit_run(state.get("config", {}), asdict(cfg), ckpt_path)
    if state is not None and not cfg.source:
        cfg = replace(cfg, source=state["config"].get("source", {}))
    torch.manual_seed(cfg.seed)
    semantic_net = None
    if cfg.semantic > 0:
        semantic_net = semantic_classifier(domain_a, labels_a, num_classes, cfg.semantic_epochs, cfg.seed, out_dir,
                                           device)
    trainer = MunitTrainer(arch, cfg, semantic_net).to(device)
    if semantic_net is not None:
        trainer.semantic_top1 = round(accuracy(semantic_net, domain_a, labels_a), 4)
    rng = torch.Generator(device="cpu").manual_seed(cfg.seed)
    start, seconds = _resume(trainer, rng, state, ckpt_path, arch, size) if state is not None else (0, 0.0)
    data_a, data_b = domain_a.to(device), domain_b.to(device)
    targets_a = labels_a.to(device) if cfg.semantic > 0 else None
    fixed = _fixed_samples(data_a, data_b, cfg, trainer)
    history: dict[str, float] = {}
    with _progress(progress) as bar:
        task = bar.add_task("train", total=cfg.iters, completed=start, rate="", losses="")
        t0, done_since = time.perf_counter(), 0
        for it in range(start, cfg.iters):
            ia = torch.randint(len(data_a), (cfg.batch_size,), generator=rng).to(device)
            ib = torch.randint(len(data_b), (cfg.batch_size,), generator=rng).to(device)
            ya = targets_a[ia] if targets_a is not None else None
            losses = trainer.step(to_signed(data_a[ia]), to_signed(data_b[ib]), rng, ya)
            history = {k: 0.9 * history.get(k, v) + 0.1 * v for k, v in losses.items()}
            done_since += 1
            if (it + 1) % 10 == 0 or it + 1 == cfg.iters:
                rate = done_since / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, completed=it + 1, rate=f"{rate:.2f} it/s", losses=_format_losses(history))
            if not all(math.isfinite(v) for v in losses.values()):
                raise FastmbrError(f"MUNIT training diverged at iteration {it + 1} ({_format_losses(losses)}); "
                                   f"lower --lr")
            elapsed = seconds + time.perf_counter() - t0
            if it + 1 in cfg.snapshots:
                _snapshot(trainer, it + 1, out_dir, size, fixed, history, elapsed)
            if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iters:
                _checkpoint(trainer, rng, it + 1, out_dir, size, fixed, history, elapsed)
    return trainer.variation(size)


def _fixed_samples(data_a, data_b, cfg: MunitTrainConfig, trainer: MunitTrainer):
    """The same A rows, B column and style draws in every sample grid, so grids compare across checkpoints."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rows = min(cfg.sample_rows, len(data_a), len(data_b))
    ia, ib = torch.randperm(len(data_a), generator=g)[:rows], torch.randperm(len(data_b), generator=g)[:rows]
    deltas = sample_prior(cfg.prior, trainer.style_low.cpu(), trainer.style_high.cpu(), (cfg.sample_k, rows), g)
    dev = data_a.device
    return data_a[ia.to(dev)].float() / 255, data_b[ib.to(dev)].float() / 255, deltas.to(dev)


def training_record(trainer: MunitTrainer, iteration: int, losses: dict[str, float], seconds: float) -> dict:
    """What G.json says of G's training: data, preset, iterations, batch, lr, loss weights, minutes."""
    c = trainer.cfg
    return {**c.source, "iterations": iteration, "planned_iterations": c.iters, "batch_size": c.batch_size,
            "recon_x_cyc": c.recon_x_cyc, "semantic": c.semantic, "lr": c.lr, "seed": c.seed,
            "train_minutes": round(seconds / 60, 2), "final_losses": {k: round(v, 5) for k, v in losses.items()},
            **({"semantic_train_top1": trainer.semantic_top1} if trainer.semantic_top1 is not None else {})}


def _checkpoint(trainer: MunitTrainer, rng: torch.Generator, iteration: int, out_dir: Path, size: int, fixed,
                losses: dict[str, float], seconds: float) -> None:
    state = {"iteration": iteration, "trainer": trainer.state_dict(), "opt_gen": trainer.opt_gen.state_dict(),
             "opt_dis": trainer.opt_dis.state_dict(), "sched_gen": trainer.sched_gen.state_dict(),
             "sched_dis": trainer.sched_dis.state_dict(), "rng": rng.get_state(), "arch": trainer.arch.to_dict(),
             "image_size": size, "config": asdict(trainer.cfg), "seconds": seconds}
    save_checkpoint(out_dir / CHECKPOINT, state)
    g = trainer.variation(size)
    save_variation(g, out_dir, trainer.cfg.size, training_record(trainer, iteration, losses, seconds))
    save_grid(g, *fixed, out_dir / "samples" / f"iter_{iteration:07d}.png")


def snapshot_dir(g_dir: str | Path, iteration: int) -> Path:
    """Where the snapshot of G at ``iteration`` lives: a G_DIR of its own."""
    return Path(g_dir) / "snapshots" / f"iter_{iteration:07d}"


def _snapshot(trainer: MunitTrainer, iteration: int, out_dir: Path, size: int, fixed, losses: dict[str, float],
              seconds: float) -> None:
    record = {**training_record(trainer, iteration, losses, seconds), "planned_iterations": iteration,
              "snapshot_of": str(out_dir)}
    g, where = trainer.variation(size), snapshot_dir(out_dir, iteration)
    save_variation(g, where, trainer.cfg.size, record)
    save_grid(g, *fixed, where / "samples.png")


def _resume(trainer: MunitTrainer, rng: torch.Generator, state: dict, path: Path, arch: MunitArch,
            size: int) -> tuple[int, float]:
    """Load the trainer state; returns (iterations done, seconds spent training so far)."""
    if state.get("arch") != arch.to_dict() or state.get("image_size") != size:
        raise FastmbrError(f"{path}: the checkpoint was trained with another architecture or image size "
                           f"({state.get('arch')}, {state.get('image_size')} px)")
    trainer.load_state_dict(state["trainer"])
    for name in ("opt_gen", "opt_dis", "sched_gen", "sched_dis"):
        getattr(trainer, name).load_state_dict(state[name])
    rng.set_state(state["rng"])
    return int(state["iteration"]), float(state.get("seconds", 0.0))
