"""Typed run configuration with presets per dataset (Appendix A). The CLI maps flags onto these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastmbr.errors import FastmbrError


@dataclass
class DataConfig:
    dataset: str = "mnist"
    shift: str | None = None  # None: the dataset's default shift
    data_dir: str | None = None
    image_size: int | None = None  # None: the dataset's preparation size
    limit: int | None = None  # use only the first N training images
    classes: str | None = None  # keep only these classes, relabelled 0..n-1: "10-199", "0,3,7"
    train_also: str | None = None  # a shift whose labelled domain B joins the training set ("+Aug" baselines)
    val_fraction: float = 0.1
    loader: str = "auto"
    augment: str = "none"
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 2
    skip_corrupt: bool = False  # image files that do not decode are left out and listed, not fatal
    max_resolution: int | None = None  # ffcv: files stored in the .beton with their longer side at most this


@dataclass
class AlgoConfig:
    name: str = "erm"
    k: int | None = None  # None: the algorithm's default (MRT 10, MAT 10, MDA 3, PGD 20 steps)
    lam: float | None = None
    alpha: float | None = None  # MAT / PGD step size
    models: list[str] = field(default_factory=list)  # "known:NAME" or a G_DIR; several → composed G1(G2(x))
    # Paper variants by name (None: the algorithm's default, ours; docs/design.md): fastmbr.algorithms.options
    select: str | None = None  # MRT: sample (ours) | batch (Algorithm 2)
    mat_init: str | None = None  # MAT: sample (ours) | zero (Algorithm 3)
    mat_step: str | None = None  # MAT: sign (ours) | grad (Algorithm 3)
    loss_reduction: str | None = None  # MRT/MAT/MDA/PGD: sum (ours) | mean over the k + 1 copies (reference code)
    shared_delta: bool = False  # composed models: one δ for all members (Eq. 6.1) instead of one each


@dataclass
class OptimConfig:
    optimizer: str = "adadelta"  # adadelta | sgd | adam
    lr: float = 1.0
    lr_end: float | None = None  # linear decay to lr_end over the run (SGD preset for ImageNet)
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 100
    warmup_epochs: int = 0  # epochs of ERM before the robust algorithm starts (escapes the initial plateau)
    fused: bool = True  # fused SGD/Adam, masked Adadelta: a non-finite step is skipped on the device, no host read


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    arch: str = "cnn"
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    amp: bool | None = None  # None: bf16 autocast on CUDA, fp32 on CPU
    compile: bool | None = None  # None: on for CUDA
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" replays CUDA graphs of the fixed-shape steps
    channels_last: bool | None = None  # None: on for CUDA
    log_every: int = 50
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: once per epoch)
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # consecutive non-finite losses tolerated (each skips its step)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "RunConfig":
        """From config.json's dict: unknown keys and wrong types are FastmbrErrors naming the key."""
        from fastmbr.typed import build

        return build(cls, d, where, ignore=CONFIG_JSON_EXTRAS)


CONFIG_JSON_EXTRAS = frozenset({"options", "commit", "models_sha256"})  # config.json's keys beside the RunConfig
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
MODEL_BASED = ("mrt", "mat", "mda")  # the algorithms that query a model of variation (their own batch preset)
_DIGITS = {"arch": "cnn", "optim": {"optimizer": "adadelta", "lr": 1.0}, "batch_size": 64}
# Appendix A: CNN + Adadelta lr 1.0, batch 64, 100 epochs; ImageNet: ResNet-50, SGD 0.05 → 0.001 linear, batch 64
# (32 for model-based algorithms). Default models of variation per dataset and shift kind.
PRESETS: dict[str, dict] = {
    "mnist": {**_DIGITS, "models": {"background-color": ["known:background-color"]}},
    "fashion-mnist": {**_DIGITS, "models": {"background-color": ["known:background-color"]}},
    "usps": {**_DIGITS, "models": {"background-color": ["known:background-color"]}},
    "mnist-m": {**_DIGITS, "models": {}},
    "svhn": {**_DIGITS, "models": {"brightness": ["known:brightness"], "contrast": ["known:contrast"]}},
    "gtsrb": {**_DIGITS, "models": {"brightness": ["known:brightness"], "contrast": ["known:contrast"]}},
    "cure-tsr": {**_DIGITS, "models": {}},
    "tiny-imagenet": {"arch": "resnet18", "optim": {"optimizer": "sgd", "lr": 0.05, "lr_end": 0.001},
                      "batch_size": 64, "augment": "crop-flip", "models": {"none": ["known:brightness"]}},
    "imagenette": {"arch": "resnet18", "optim": {"optimizer": "sgd", "lr": 0.05, "lr_end": 0.001},
                   "batch_size": 64, "augment": "rrc-flip", "models": {"none": ["known:brightness"]}},
    "imagenet": {"arch": "resnet50", "optim": {"optimizer": "sgd", "lr": 0.05, "lr_end": 0.001},
                 "batch_size": 64, "model_based_batch_size": 32, "augment": "rrc-flip",
                 "models": {"none": ["known:brightness"]}},
    "folder": {"arch": "resnet18", "optim": {"optimizer": "sgd", "lr": 0.05, "lr_end": 0.001},
               "batch_size": 64, "augment": "rrc-flip", "models": {"none": ["known:brightness"]}},
}


def preset_config(dataset: str, algo: str = "erm", shift: str | None = None) -> RunConfig:
    """The Appendix A configuration for ``dataset``; flags override its fields afterwards."""
    if dataset not in PRESETS:
        raise FastmbrError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(PRESETS))}")
    p = PRESETS[dataset]
    model_based = algo in MODEL_BASED
    batch = p.get("model_based_batch_size", p["batch_size"]) if model_based else p["batch_size"]
    kind = (shift or "").partition(":")[0] or None
    from fastmbr.pipelines.datasets import dataset_info

    kind = kind or dataset_info(dataset).default_shift
    return RunConfig(
        data=DataConfig(dataset=dataset, shift=shift, batch_size=batch, augment=p.get("augment", "none")),
        algo=AlgoConfig(name=algo, models=list(p["models"].get(kind, [])) if model_based else []),
        optim=OptimConfig(**p["optim"]),
        arch=p["arch"],
    )
