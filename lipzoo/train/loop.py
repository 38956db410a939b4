"""The training loop: fast on a 2-core CPU, resumable, deterministic, distributed through torchrun.

* CPU: channels_last + ``torch.autocast('cpu', dtype=torch.bfloat16)`` with bf16 inputs; parametrisations stay
  float32 inside the layers. GPU: autocast bf16 (or fp16 with a GradScaler).
* Determinism: the epoch permutation comes from a generator seeded with (seed, epoch) and each step's
  augmentation from one seeded with (seed, epoch, step), drawn for the *global* batch. A resumed run, and a
  run split over N DDP ranks (each rank takes its slice of the global batch), see exactly the same images.
* Checkpoints (model, optimizer, scheduler, RNG states, epoch, step) every ``checkpoint_minutes`` and at the
  end, written atomically; ``resume=True`` continues from the last one. Training checkpoints are lipzoo's own
  files and are read back with ``torch.load(weights_only=True)``.
* Weight averaging (``recipe.ema_decay > 0``, :class:`WeightEMA`): an exponential moving average of the parameters,
  updated after every optimizer step and saved in the checkpoint (a resume is exact); the averaged weights are what
  is exported, evaluated on the test set and certified, and with ``val_split > 0`` each epoch also logs their
  validation metrics (``val_ema_clean``, ``val_ema_cert36``) beside the trained weights' (``val_clean``,
  ``val_cert36``).
* No test-set selection: the final model is evaluated once on the full test set with the shared certifier and
  written as ``results.json`` (the claims record) and ``model.safetensors``, ready for ``lipzoo publish``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._checkout import code_revision
from ..data import load_cifar
from ..certification import certify, label_radii, rule_of
from .augment import AugmentConfig, augment_batch
from .losses import TrainingLoss
from .recipes import Recipe

__all__ = ["train", "TrainState", "WeightEMA", "build_optimizer", "build_scheduler", "export_model"]

_SLL_JITTER = (0.1, (0.5, 2.0), (0.3, 2.0), 0.02)


# ------------------------------------------------------------------------------------------ distributed
def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_distributed(device: torch.device) -> tuple[int, int]:
    rank, world, _ = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def _pick_device(name: str | None) -> torch.device:
    """``name`` (``cuda`` without an index means this process's ``LOCAL_RANK`` GPU under torchrun), else the
    local GPU if there is one, else the CPU. A CUDA device becomes the current one (NCCL needs it)."""
    dev = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", _dist_env()[2])
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


# ------------------------------------------------------------------------------------------ optimisation
def _decays(name: str, p: torch.Tensor, recipe: Recipe) -> bool:
    if recipe.wd_rule == "none" or recipe.weight_decay == 0:
        return False
    if any(k in name for k in recipe.no_wd_keywords):
        return False
    if recipe.wd_rule == "weights":
        return ("weight" in name or "kernel" in name or "random_conv_filter" in name) and p.dim() > 1
    return True


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # frozen parameters stay in the groups (they get no gradient, so no update): the optimizer state layout then
    # does not depend on which parameters are frozen
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if _decays(name, p, recipe) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, betas=tuple(recipe.betas))
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_factor(step: int, total: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total`` steps."""
    warm = int(recipe.warmup_epochs * steps_per_epoch)
    if warm and step < warm:
        return (step + 1) / warm
    if recipe.schedule == "triangular":  # LBDN/SLL "interp": [0, .4N, .8N, N] -> [0, 1, 1/20, 0]
        return float(np.interp(step, [0, 0.4 * total, 0.8 * total, total], [0.0, 1.0, 0.05, 0.0]))
    if recipe.schedule == "multistep":
        return 0.1 ** sum(step >= m * total for m in recipe.milestones)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if recipe.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def build_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = recipe.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, recipe, steps_per_epoch))


# ------------------------------------------------------------------------------------------ weight averaging
class WeightEMA:
    """Exponential moving average of a model's parameters, kept in float32 beside the model.

    After the ``t``-th optimizer step (``t = 0, 1, ...``) every parameter's average moves as
    ``ema <- d_t * ema + (1 - d_t) * param`` with ``d_t = min(decay, (1 + t) / (10 + t))`` (the warm-up keeps the
    early average from being dominated by the initial weights), starting from the initial weights. Buffers are not
    averaged: :meth:`copy_to` takes them from the trained model. Only parameters are averaged, never a
    parametrisation's output, so the averaged model is as Lipschitz as any weights of its family: its bound is
    computed from the averaged parameters like any other model's.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        w = 1.0 - self.decay_at(self.updates)
        for n, p in model.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), w)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the checkpoint's EMA parameters do not match the model's")
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)
        self.updates = int(state["updates"])

    @torch.no_grad()
    def copy_to(self, target: nn.Module, source: nn.Module) -> nn.Module:
        """Load the averaged parameters (and ``source``'s buffers) into ``target`` and return it in eval mode.

        ``load_state_dict`` clears every parametrisation cache (``lipzoo.layers.base.ParametrizationCache``) and
        bumps the parameters' version counters; ``train()`` clears them once more before ``eval()``, so no
        orthogonalised kernel or rescaling computed from older weights survives the copy."""
        state = source.state_dict()
        for n, t in self.shadow.items():
            state[n] = t
        target.load_state_dict(state)
        target.train()
        return target.eval()


# ------------------------------------------------------------------------------------------ data
def _augment_config(recipe: Recipe) -> AugmentConfig | None:
    if recipe.augment == "none":
        return AugmentConfig(crop=0, flip=False)
    if recipe.augment == "crop_flip":
        return AugmentConfig(crop=4, pad_mode=recipe.pad_mode, flip=True)
    if recipe.augment == "crop_flip_jitter":
        return AugmentConfig(crop=4, pad_mode=recipe.pad_mode, flip=True, jitter=_SLL_JITTER)
    raise ValueError(f"unknown augmentation {recipe.augment!r}")


def _split_train_val(x: np.ndarray, y: np.ndarray, n_val: int, seed: int):
    if n_val <= 0:
        return (x, y), None
    perm = np.random.default_rng(seed + 7919).permutation(len(y))
    val, tr = perm[:n_val], perm[n_val:]
    return (x[tr], y[tr]), (x[val], y[val])


def _seeded(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] % (2 ** 63)))
    return g


# ------------------------------------------------------------------------------------------ checkpoints
def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_model(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state dict (float32, contiguous) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp.safetensors")
    save_file(state, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)


class TrainState:
    """Bookkeeping of a run directory: ``checkpoint.pt``, ``log.jsonl``, ``recipe.json``, ``model.safetensors``,
    ``results.json``."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.ckpt = self.dir / "checkpoint.pt"
        self.log = self.dir / "log.jsonl"

    def log_epoch(self, record: dict[str, Any]) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------ train
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _batch_certified(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, lipschitz: float,
                     features: torch.Tensor | None = None, eps: float = 36 / 255) -> float:
    try:
        with torch.no_grad():
            feats = None if features is None else features.detach().float()
            radii = label_radii(model, logits.float(), labels, features=feats, lipschitz=lipschitz)
        return float((radii > eps).float().mean())
    except Exception:  # a progress metric must never stop a run
        return float("nan")


@dataclass
class _Data:
    """The training images (uint8 NHWC tensors), the validation split (numpy, or ``None``) and the step counts."""

    x: torch.Tensor
    y: torch.Tensor
    val: tuple[np.ndarray, np.ndarray] | None
    steps_per_epoch: int
    total_steps: int


@dataclass
class _Run:
    """Everything one training run holds: its recipe, device and DDP place, data, model, optimizer, scheduler,
    loss, weight average and the optimizer-step counter ``step`` (the only state that advances)."""

    recipe: Recipe
    dev: torch.device
    rank: int
    world: int
    out: TrainState
    data: _Data
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss_fn: TrainingLoss
    ema: WeightEMA | None
    ema_model: nn.Module | None
    step: int = 0
    train_model: nn.Module | None = None
    aug: AugmentConfig | None = None
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    last_save: float = 0.0
    initial: dict[str, str] | None = None  # the weights the run started from (file name, sha256), None: random init

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def in_dtype(self) -> torch.dtype:
        return torch.bfloat16 if (self.recipe.fast and self.dev.type == "cpu") else torch.float32

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        _save_atomic({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng_cpu": torch.get_rng_state(), "epoch": self.step // self.data.steps_per_epoch, "step": self.step,
            "recipe": json.loads(json.dumps(self.recipe.to_dict())),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"initial_checkpoint": self.initial} if self.initial is not None else {}),
        }, self.out.ckpt)

    def averaged(self) -> nn.Module:
        """The weights that are exported and certified: the EMA when it is on, else the trained model."""
        return self.model if self.ema is None else self.ema.copy_to(self.ema_model, self.model)


def _load_data(recipe: Recipe, data_root: str | None, train_subset: int | None) -> _Data:
    x_all, y_all = load_cifar(recipe.dataset, "train", data_root)
    if train_subset:
        x_all, y_all = x_all[:train_subset], y_all[:train_subset]
    (x_tr, y_tr), val = _split_train_val(x_all, y_all, recipe.val_split, recipe.seed)
    steps_per_epoch = len(y_tr) // recipe.batch_size  # drop_last, as the reference loops do
    if steps_per_epoch == 0:
        raise ValueError(f"training set of {len(y_tr)} images is smaller than one batch ({recipe.batch_size})")
    return _Data(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr), val, steps_per_epoch,
                 recipe.epochs * steps_per_epoch)


def _initial_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load the lipzoo weights file ``path`` (e.g. a published ``model.safetensors``) into ``model``; return its
    file name and sha256, which the run records (never the local path)."""
    from ..convert import load_checkpoint

    path = Path(path)
    load_checkpoint(model, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest}


def _setup(recipe: Recipe, out_dir: str | Path, device: str | None, data_root: str | None,
           train_subset: int | None, initial_checkpoint: str | Path | None = None) -> _Run:
    """Device, process group, output folder, data, then (seeded with ``recipe.seed``) model, optimizer, scheduler,
    loss and weight average, in this order (the order fixes the RNG draws). ``initial_checkpoint`` replaces the
    random initial weights (drawn all the same, so the later draws do not depend on it) before the optimizer and
    the weight average see them."""
    import timm

    from ..models._registry import resolve_name

    dev = _pick_device(device)
    rank, world = _init_distributed(dev)
    out = TrainState(Path(out_dir))
    if rank == 0:
        out.dir.mkdir(parents=True, exist_ok=True)
    if recipe.batch_size % world:
        raise ValueError(f"global batch {recipe.batch_size} is not divisible by the world size {world}")
    data = _load_data(recipe, data_root, train_subset)

    torch.manual_seed(recipe.seed)
    num_classes = 100 if recipe.dataset == "cifar100" else 10
    model = timm.create_model(resolve_name(recipe.model), num_classes=num_classes, **recipe.model_args)
    initial = _initial_weights(model, initial_checkpoint) if initial_checkpoint is not None else None
    model = model.to(dev)
    if recipe.fast:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, data.steps_per_epoch)
    loss_fn = TrainingLoss(recipe.loss, recipe.offset, recipe.temperature, recipe.margin, recipe.cr_gamma,
                           recipe.curvature_beta)
    # the averaged weights and a copy of the model to evaluate them in (deepcopy: no RNG is drawn, so training
    # is the same with and without EMA); created before any hook is registered on the model
    ema = WeightEMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    ema_model = copy.deepcopy(model).eval() if ema is not None else None
    return _Run(recipe, dev, rank, world, out, data, model, opt, sched, loss_fn, ema, ema_model, initial=initial)


def _resume_or_refuse(run: _Run, resume: bool) -> None:
    """Load ``checkpoint.pt`` (model, optimizer, scheduler, CPU RNG, step, EMA) when ``resume``, refusing a changed
    recipe; refuse to overwrite an existing checkpoint without ``resume``. Then write ``recipe.json``."""
    out, recipe = run.out, run.recipe
    if resume and out.ckpt.exists():
        ck = torch.load(out.ckpt, map_location="cpu", weights_only=True)
        # a field added to Recipe after the checkpoint was written ran with its default (e.g. ema_decay = 0)
        saved = {**json.loads(json.dumps(Recipe().to_dict())), **ck["recipe"]}
        now = json.loads(json.dumps(recipe.to_dict()))
        if saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"cannot resume {out.ckpt}: the recipe changed ({', '.join(changed)}); use a new --out")
        started = ck.get("initial_checkpoint")
        if run.initial is not None and run.initial != started:
            raise ValueError(f"cannot resume {out.ckpt}: it started from {started or 'random weights'}, not from "
                             f"{run.initial['file']} (sha256 {run.initial['sha256'][:12]}); use a new --out")
        run.initial = started
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        run.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng_cpu"])
        run.step = int(ck["step"])
        if run.ema is not None:
            run.ema.load_state_dict(ck["ema"])
    elif out.ckpt.exists() and run.is_main:
        raise FileExistsError(f"{out.ckpt} exists: pass resume=True (--resume) to continue, or use a new output dir")
    if run.is_main:
        (out.dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        if run.initial is not None:
            (out.dir / "initial_checkpoint.json").write_text(json.dumps(run.initial, indent=2) + "\n")


def _wrap(run: _Run) -> None:
    """The module that runs the forward pass (DDP over ``world > 1`` processes), the augmentation, and, for the
    MLP-curvature rule, a hook that captures the head's input (works under DDP too)."""
    run.train_model = run.model
    if run.world > 1:
        ids = [run.dev.index] if run.dev.type == "cuda" else None
        run.train_model = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    run.aug = _augment_config(run.recipe)
    if rule_of(run.model).needs_features:
        run.model.get_classifier().register_forward_hook(
            lambda m, inp, out: run.captured.__setitem__("features", inp[0]))


def _train_step(run: _Run, perm: torch.Tensor, epoch: int, lipschitz: float) -> tuple[float, float, float]:
    """One optimizer step on this rank's slice of the global batch ``step``; returns (loss, accuracy, certified
    fraction at 36/255 every 10th step, else nan)."""
    recipe, dev, model = run.recipe, run.dev, run.model
    i = run.step % run.data.steps_per_epoch
    idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
    xb = augment_batch(run.data.x[idx], run.aug, _seeded(recipe.seed, epoch, i), dtype=run.in_dtype)
    yb = run.data.y[idx]
    local_bs = recipe.batch_size // run.world
    lo, hi = run.rank * local_bs, (run.rank + 1) * local_bs
    xb, yb = xb[lo:hi].to(dev), yb[lo:hi].to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16) if recipe.fast else nullcontext():
        logits = run.train_model(xb)
    loss = run.loss_fn(model, logits.float(), yb, features=run.captured.get("features"), lipschitz=lipschitz)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    run.opt.step()
    run.sched.step()
    if run.ema is not None:
        run.ema.update(model)
    run.step += 1
    with torch.no_grad():
        acc = float((logits.argmax(1) == yb).float().mean())
    cert = _batch_certified(model, logits.detach(), yb, lipschitz, run.captured.get("features")) \
        if (i % 10 == 0) else float("nan")
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"loss is {loss_value} at step {run.step}; lower the lr or check the data")
    return loss_value, acc, cert


def _train_epoch(run: _Run, stop_at: int, lipschitz: float, progress: bool) -> dict[str, float]:
    """The steps of the current epoch up to ``stop_at`` (a resumed epoch starts mid-way, on the same permutation),
    checkpointing every ``checkpoint_minutes``; returns the sums for the epoch record."""
    recipe, spe = run.recipe, run.data.steps_per_epoch
    epoch = run.step // spe
    perm = torch.randperm(len(run.data.y), generator=_seeded(recipe.seed, epoch))
    run.train_model.train()
    sums = {"loss": 0.0, "acc": 0.0, "cert": 0.0, "n": 0}
    sums["t0"], sums["cpu0"] = time.time(), time.process_time()
    pbar = None
    if progress and run.is_main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=spe, initial=run.step % spe, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                    dynamic_ncols=True)
    while run.step < stop_at and run.step // spe == epoch:
        loss_value, acc, cert = _train_step(run, perm, epoch, lipschitz)
        sums["loss"] += loss_value; sums["acc"] += acc; sums["n"] += 1
        if cert == cert:
            sums["cert"] += cert; sums.setdefault("ncert", 0); sums["ncert"] += 1
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{acc:.3f}", cert36=f"{cert:.3f}" if cert == cert else "-",
                             ips=f"{sums['n'] * recipe.batch_size / (time.time() - sums['t0']):.0f}")
        if time.time() - run.last_save > recipe.checkpoint_minutes * 60:
            run.save_checkpoint()
            run.last_save = time.time()
    if pbar is not None:
        pbar.close()
    return sums


def _epoch_record(run: _Run, epoch: int, sums: dict[str, float], lipschitz: float) -> dict[str, Any]:
    """The log record of an epoch (``partial`` when it stopped mid-way), with validation metrics when
    ``val_split > 0`` (and those of the averaged weights when EMA is on)."""
    recipe, t0 = run.recipe, sums["t0"]
    rec = {
        "epoch": epoch + 1, "step": run.step, "partial": run.step % run.data.steps_per_epoch != 0,
        "loss": sums["loss"] / sums["n"], "train_acc": sums["acc"] / sums["n"],
        "train_cert36": sums["cert"] / max(sums.get("ncert", 0), 1),
        "lr": run.opt.param_groups[0]["lr"], "lipschitz_bound": lipschitz,
        "seconds": time.time() - t0, "images_per_s": sums["n"] * recipe.batch_size / (time.time() - t0),
        "cpu_seconds": time.process_time() - sums["cpu0"],  # this process's CPU time, all threads (rank 0)
    }
    val, dev = run.data.val, run.dev
    if val is not None:
        rec.update(_quick_eval(run.model, val[0], val[1], dev))
        if run.ema is not None:
            ema_val = _quick_eval(run.averaged(), val[0], val[1], dev)
            rec.update({"val_ema_" + k[len("val_"):]: v for k, v in ema_val.items()})
    return rec


def _finish(run: _Run, evaluate: bool, data_root: str | None, eval_subset: int | None) -> dict[str, Any]:
    """After the last step: export the (averaged) weights and, when ``evaluate``, certify them on the test set."""
    from .._version import __version__

    recipe, step, total_steps = run.recipe, run.step, run.data.total_steps
    if run.world > 1:
        dist.barrier()
    result: dict[str, Any] = {"step": step, "total_steps": total_steps, "finished": step >= total_steps}
    if run.is_main and step >= total_steps:
        meta = {"arch": recipe.model, "recipe": recipe.name, "lipzoo_version": __version__,
                "git_revision": code_revision()[0] or "unknown"}
        final = run.averaged()
        if run.ema is not None:
            meta["ema_decay"] = str(recipe.ema_decay)
        export_model(final, run.out.dir / "model.safetensors", meta)
        if evaluate:
            result["claims"] = evaluate_and_write(final, recipe, run.out.dir, data_root, eval_subset, run.initial)
    return result


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_root: str | None = None,
    device: str | None = None,
    fast: bool | None = None,
    max_steps: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    initial_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir``; returns the final record (and writes results.json when ``evaluate``).

    ``max_steps`` stops after that many optimizer steps in total (for tests and for interrupting); a later call
    with ``resume=True`` continues exactly. ``fast`` overrides ``recipe.fast`` (channels_last + bf16 autocast on CPU,
    autocast on GPU) and is recorded in the run's recipe.
    ``train_subset`` / ``eval_subset`` use the first N images (for tests only).
    ``initial_checkpoint``: a lipzoo weights file of ``recipe.model`` (e.g. the published ``model.safetensors``) to
    start from instead of random weights (timm's ``--initial-checkpoint``); optimizer, schedule and weight average
    start afresh. Its file name and sha256 are recorded (``initial_checkpoint.json``, ``results.json``); a resumed
    run refuses another one.
    """
    if fast is not None:
        recipe = recipe.replace(fast=fast)
    run = _setup(recipe, out_dir, device, data_root, train_subset, initial_checkpoint)
    _resume_or_refuse(run, resume)
    _wrap(run)

    run.last_save = time.time()
    stop_at = run.data.total_steps if max_steps is None else min(run.data.total_steps, max_steps)
    lipschitz = float(run.model.lipschitz_bound()) if run.step < stop_at else 1.0
    while run.step < stop_at:
        epoch = run.step // run.data.steps_per_epoch
        sums = _train_epoch(run, stop_at, lipschitz, progress)
        lipschitz = float(run.model.lipschitz_bound())
        if run.is_main and sums["n"]:
            rec = _epoch_record(run, epoch, sums, lipschitz)
            run.out.log_epoch(rec)
            print(json.dumps(rec), flush=True)
        run.save_checkpoint()
        run.last_save = time.time()
    return _finish(run, evaluate, data_root, eval_subset)


def _quick_eval(model: nn.Module, x: np.ndarray, y: np.ndarray, dev: torch.device) -> dict[str, float]:
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div(255)
    res = certify(model, images, torch.from_numpy(y), eps=(36 / 255,))
    return {"val_clean": res.clean_accuracy, "val_cert36": list(res.certified_accuracy.values())[0]}


def evaluate_and_write(model: nn.Module, recipe: Recipe, out_dir: Path, data_root: str | None = None,
                       subset: int | None = None, initial: dict[str, str] | None = None) -> dict[str, Any]:
    """Certify the final model on the test set with the shared certifier; write ``results.json``."""
    x, y = load_cifar(recipe.dataset, "test", data_root)
    if subset:
        x, y = x[:subset], y[:subset]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div(255)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    res = certify(model, images, torch.from_numpy(y))
    claims = res.to_claims(dataset=recipe.dataset, split="test", subset="full" if not subset else "subset")
    record = {
        "arch": recipe.model, "recipe": recipe.to_dict(), "claims": claims, "git_revision": code_revision()[0],
        "torch": torch.__version__, "platform": platform.platform(),
        **({"initial_checkpoint": initial} if initial is not None else {}),
    }
    (Path(out_dir) / "results.json").write_text(json.dumps(record, indent=2))
    return claims
