"""How good is a learned G? Two numbers, each judged by a helper classifier (the paper's CNN):

* **content kept**: accuracy of an *oracle* (trained on labelled A ∪ B training images, so it is indifferent to
  the shift) on G(x_A, δ) with the labels of x_A, δ drawn from G's prior; also as a ratio to the oracle's accuracy
  on x_A itself, and in the worst of k draws per image (every one of k draws must keep the label: what MRT-k sees);
* **shift achieved**: share of G(x_A, δ) that a *domain classifier* (A vs B) calls B.

Both are also reported on x_A itself (identity) and on real B test images, as the floor and the ceiling; those
two rows are the helpers' own test accuracies (``helpers``), so a weak judge shows. The helpers are trained once
(Adadelta, lr 1.0, as the paper's CNN; 10 epochs at batch 64 reach ~90 % on GTSRB's real A and B test images, where
3 epochs at batch 128 stopped at 61 %) and cached under ``cache_dir``. The oracle sees labels of B: it is a judge,
never used for training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier
from fastmbr.pipelines.datasets import Domains
from fastmbr.variation.base import NaturalVariation
from fastmbr.fileio import atomic_write


@dataclass(frozen=True)
class ScoreConfig:
    epochs: int = 10
    max_train: int = 20000  # helper training images (A ∪ B), drawn evenly from both pools
    max_test: int | None = None
    batch_size: int = 64
    seed: int = 0
    worst_k: int = 10  # draws per image for "content kept, worst of k"


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ScoreConfig,
                     device: torch.device) -> nn.Module:
    """The paper's CNN on uint8 images, Adadelta lr 1.0, ``cfg.epochs`` shuffled epochs."""
    torch.manual_seed(cfg.seed)
    model = build_classifier("cnn", num_classes, images.shape[1], images.shape[-1]).to(device)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(images), generator=gen).split(cfg.batch_size):
            x = images[idx].to(device).float() / 255.0
            loss = F.cross_entropy(model(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _balanced(a: torch.Tensor, b: torch.Tensor, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most limit/2 random indices into each of two pools."""
    gen = torch.Generator().manual_seed(seed)
    half = max(1, limit // 2)
    return torch.randperm(len(a), generator=gen)[:half], torch.randperm(len(b), generator=gen)[:half]


def helper_classifiers(domains: Domains, cfg: ScoreConfig, device: torch.device,
                       cache_dir: Path | None) -> tuple[nn.Module, nn.Module]:
    """(oracle over the classes, domain classifier A=0 / B=1), loaded from the cache when present."""
    pool_a, pool_b = domains.unlabeled.get("A"), domains.unlabeled.get("B")
    if pool_a is None or pool_b is None:
        raise FastmbrError(f"{domains.info.name} {domains.shift.label}: scoring needs images of both domains")
    ia, ib = _balanced(pool_a.images, pool_b.images, cfg.max_train, cfg.seed)
    images = torch.cat([pool_a.images[ia], pool_b.images[ib]])
    labels = torch.cat([pool_a.labels[ia], pool_b.labels[ib]])
    domain = torch.cat([torch.zeros(len(ia), dtype=torch.long), torch.ones(len(ib), dtype=torch.long)])
    key = (f"{domains.info.name}-{domains.shift.kind}-{domains.shift.a}-{domains.shift.b}-{images.shape[-1]}px-"
           f"n{len(images)}-of{len(pool_a) + len(pool_b)}-e{cfg.epochs}-b{cfg.batch_size}-s{cfg.seed}")
    oracle = _cached(cache_dir, f"oracle-{key}", lambda: train_classifier(images, labels, domains.num_classes,
                                                                           cfg, device), domains.num_classes,
                     images.shape, device)
    critic = _cached(cache_dir, f"domain-{key}", lambda: train_classifier(images, domain, 2, cfg, device), 2,
                     images.shape, device)
    return oracle, critic


def _cached(cache_dir: Path | None, name: str, train, num_classes: int, shape, device) -> nn.Module:
    path = Path(cache_dir) / f"{name}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        model = build_classifier("cnn", num_classes, shape[1], shape[-1])
        model.load_state_dict(load_file(str(path)))
        return model.to(device).eval()
    model = train()
    if path is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda f: f.write(save(state)))
    return model


@torch.no_grad()
def _rates(images: torch.Tensor, labels: torch.Tensor, oracle: nn.Module, critic: nn.Module, device,
           transform=None, batch_size: int = 256) -> dict[str, float]:
    """(accuracy of the oracle, share the critic calls B) on images, optionally passed through transform."""
    correct = called_b = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        x = x.to(device).float() / 255.0
        if transform is not None:
            x = transform(x)
        correct += int((oracle(x).argmax(1) == y.to(device)).sum())
        called_b += int((critic(x).argmax(1) == 1).sum())
    n = max(len(images), 1)
    return {"content_kept": correct / n, "shift_achieved": called_b / n}


WORST_PREFIX = "content_kept_worst_of_"  # + K: the score's share of A's test images kept in all of K draws


def kept_in_all_draws(result: dict) -> tuple[int, float]:
    """(K, the share of A's test images whose label survives every one of G's K draws) from a score."""
    key = next(k for k in result if k.startswith(WORST_PREFIX))
    return int(key[len(WORST_PREFIX):]), result[key]


@torch.no_grad()
def _worst_of_k(images: torch.Tensor, labels: torch.Tensor, oracle: nn.Module, g: NaturalVariation, k: int,
                generator: torch.Generator, device, batch_size: int = 128) -> float:
    """Share of images whose k draws G(x, δ_1..k) the oracle all labels right."""
    kept = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        x, y = x.to(device).float() / 255.0, y.to(device)
        varied = g.expand(x, g.sample_delta(x.shape[0], k, generator).to(device))  # [k, B, C, H, W]
        right = torch.stack([oracle(v).argmax(1) == y for v in varied])
        kept += int(right.all(0).sum())
    return kept / max(len(images), 1)


def score(g: NaturalVariation, domains: Domains, device: str | torch.device = "cpu",
          cache_dir: str | Path | None = None, cfg: ScoreConfig = ScoreConfig(), g_info: dict | None = None) -> dict:
    """Content kept and shift achieved by G on domain A's test images (and the identity / real-B references).

    ``g_info``: what G is (preset, iterations, batch, minutes...), copied into the result."""
    device = torch.device(device)
    test_a, test_b = domains.test.get("A"), domains.test.get("B")
    if test_a is None or test_b is None:
        raise FastmbrError(f"{domains.info.name} {domains.shift.label}: scoring needs test images of A and B")
    if cfg.max_test is not None:
        test_a, test_b = test_a.subset(torch.arange(min(cfg.max_test, len(test_a)))), \
            test_b.subset(torch.arange(min(cfg.max_test, len(test_b))))
    oracle, critic = helper_classifiers(domains, cfg, device, Path(cache_dir) if cache_dir else None)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    g = g.to(device).eval()

    def vary(x: torch.Tensor) -> torch.Tensor:
        return g(x, g.sample_delta(x.shape[0], 1, gen)[0].to(device))

    varied = _rates(test_a.images, test_a.labels, oracle, critic, device, vary)
    identity = _rates(test_a.images, test_a.labels, oracle, critic, device)
    real_b = _rates(test_b.images, test_b.labels, oracle, critic, device)
    worst = _worst_of_k(test_a.images, test_a.labels, oracle, g, cfg.worst_k, gen, device)
    return {
        **varied,
        "content_kept_vs_identity": varied["content_kept"] / max(identity["content_kept"], 1e-9),
        f"{WORST_PREFIX}{cfg.worst_k}": worst,
        "identity": identity,
        "real_b": real_b,
        "helpers": {
            "oracle_top1": {"real_a": identity["content_kept"], "real_b": real_b["content_kept"]},
            "domain_top1": {"real_a": 1.0 - identity["shift_achieved"], "real_b": real_b["shift_achieved"]},
            **asdict(cfg),
        },
        "g": g_info or {},
        "n_test": len(test_a),
        "dataset": domains.info.name,
        "shift": domains.shift.label,
    }


def describe_g(meta: dict) -> dict:
    """The facts of G.json a score reports beside its numbers."""
    t = meta.get("training", {})
    return {"preset": meta.get("size"), "iterations": t.get("iterations"), "batch_size": t.get("batch_size"),
            "train_minutes": t.get("train_minutes"), "semantic": t.get("semantic", 0.0),
            "recon_x_cyc": t.get("recon_x_cyc", 0.0), "prior": meta.get("prior"), "delta_box": meta.get("delta_box"),
            "image_size": meta.get("image_size"), "lr": t.get("lr")}
