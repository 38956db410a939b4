"""Training loop: determinism, exact resume, DDP equivalence (gloo on loopback), losses, CR."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import lipzoo
from lipzoo.train import get_recipe
from lipzoo.train.augment import AugmentConfig, augment_batch
from lipzoo.train.losses import TrainingLoss
from lipzoo.train.loop import lr_factor, train

TINY = dict(width=8, n_conv=1, n_dense=1, conv_inner_dim=4, dense_inner_dim=16)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        labels = rng.integers(0, 10, 16)
        data = rng.integers(0, 256, (16, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # a learnable signal in the red plane
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    return root


def _recipe(**kw):
    base = dict(model="sll_xs", model_args=TINY, epochs=2, batch_size=16, lr=0.01, augment="crop_flip_jitter",
                checkpoint_minutes=1e9, seed=3)
    base.update(kw)
    return get_recipe("sll_cpu").replace(**base)


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_resume_is_exact(tmp_path, tiny_data):
    r = _recipe()
    train(r, tmp_path / "full", data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    out = train(r, tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=4)
    assert out["finished"] is False and out["step"] == 4
    with pytest.raises(FileExistsError):
        train(r, tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    train(r, tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, resume=True)
    a, b = _params(tmp_path / "full"), _params(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (tmp_path / "full" / "model.safetensors").exists()
    logs = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in logs] == [1, 2]
    assert all(e["cpu_seconds"] > 0 and e["seconds"] > 0 for e in logs)


def test_resume_refuses_a_changed_recipe(tmp_path, tiny_data):
    r = _recipe()
    train(r, tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=2)
    with pytest.raises(ValueError, match="recipe changed"):
        train(r.replace(lr=0.02), tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False,
              progress=False, resume=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, data_root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(_recipe(), out, data_root=data_root, fast=False, evaluate=False, progress=False, device="cpu")
    import torch.distributed as dist

    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path, tiny_data):
    train(_recipe(), tmp_path / "single", data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tiny_data)), nprocs=2, join=True)
    a, b = _params(tmp_path / "single"), _params(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_fast_path_trains(tmp_path, tiny_data):
    out = train(_recipe(epochs=1), tmp_path / "fast", data_root=str(tiny_data), fast=True, evaluate=False, progress=False)
    assert out["finished"]
    state = load_file(str(tmp_path / "fast" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_precision_is_part_of_the_recorded_recipe(tmp_path, tiny_data):
    from lipzoo.cli.train import add_train_arguments, recipe_from_args

    assert get_recipe("soc_cpu").fast is False and get_recipe("sll_cpu").fast is True
    r = _recipe(epochs=1)
    assert r.fast is True
    train(r, tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=1)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["fast"] is False
    with pytest.raises(ValueError, match="recipe changed .*fast"):
        train(r, tmp_path / "run", data_root=str(tiny_data), fast=True, evaluate=False, progress=False, resume=True)
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    assert recipe_from_args(p.parse_args(["--recipe", "sll_cpu", "--out", "x", "--fast", "false"])).fast is False
    assert recipe_from_args(p.parse_args(["--recipe", "sll_cpu", "--out", "x", "--no-fast"])).fast is False
    assert recipe_from_args(p.parse_args(["--recipe", "soc_cpu", "--out", "x"])).fast is False


def test_triangular_and_multistep_schedules():
    r = _recipe(schedule="triangular")
    assert lr_factor(0, 100, r, 10) == 0.0 and lr_factor(40, 100, r, 10) == pytest.approx(1.0)
    assert lr_factor(80, 100, r, 10) == pytest.approx(0.05) and lr_factor(100, 100, r, 10) == 0.0
    r = _recipe(schedule="multistep", milestones=(0.5, 0.75))
    assert lr_factor(49, 100, r, 10) == 1.0 and lr_factor(50, 100, r, 10) == pytest.approx(0.1)
    assert lr_factor(75, 100, r, 10) == pytest.approx(0.01)


def test_augmentation_is_deterministic_and_in_range():
    x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    cfg = AugmentConfig(crop=4, pad_mode="reflect", flip=True, jitter=(0.1, (0.5, 2.0), (0.3, 2.0), 0.02))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment_batch(x, cfg, g1), augment_batch(x, cfg, g2)
    assert torch.equal(a, b) and a.shape == (8, 3, 32, 32)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    plain = augment_batch(x, AugmentConfig(crop=0, flip=False), g1)
    assert torch.allclose(plain, x.permute(0, 3, 1, 2).float() / 255)


def _fixed_batch():
    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs", **TINY)
    x = torch.rand(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    return model, x, y


@pytest.mark.parametrize("kind", ["xent", "ce", "multimargin"])
def test_each_loss_decreases_on_a_fixed_batch(kind):
    model, x, y = _fixed_batch()
    loss_fn = TrainingLoss(kind)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    first = None
    for _ in range(30):
        loss = loss_fn(model, model(x), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad(); loss.backward(); opt.step()
    assert float(loss_fn(model, model(x), y).detach()) < first


def test_certificate_regularisation_increases_the_mean_margin():
    from lipzoo import certification as certify

    def mean_radius(gamma: float) -> float:
        model, x, y = _fixed_batch()
        loss_fn = TrainingLoss("ce", cr_gamma=gamma)
        opt = torch.optim.Adam(model.parameters(), 0.01)
        for _ in range(40):
            loss = loss_fn(model, model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            return float(certify.label_radii(model, model(x), y).clamp_min(0).mean())

    assert mean_radius(1.0) > mean_radius(0.0)


# ------------------------------------------------------------------------------------------ weight averaging
def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_ema_off_is_the_default_and_changes_nothing(tmp_path, tiny_data):
    from lipzoo.train.recipes import RECIPES, Recipe

    assert Recipe().ema_decay == 0.0
    # EMA only where a recipe asks for it (the round-1 recipes of the published models do not)
    assert {k for k, r in RECIPES.items() if r.ema_decay} == {"sandwich_cpu_long", "cayley_cpu"}
    off = _recipe(epochs=1, val_split=16)
    train(off, tmp_path / "off", data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    train(off.replace(ema_decay=0.9), tmp_path / "on", data_root=str(tiny_data), fast=False, evaluate=False,
          progress=False)
    ck_off, ck_on = _ckpt(tmp_path / "off"), _ckpt(tmp_path / "on")
    assert "ema" not in ck_off and "ema" in ck_on
    # the average only observes: the trained weights are bit-identical with and without it
    for k in ck_off["model"]:
        torch.testing.assert_close(ck_off["model"][k], ck_on["model"][k], rtol=0, atol=0, msg=k)
    # without EMA the exported weights are the trained ones, and the log has no EMA metrics
    exported = load_file(str(tmp_path / "off" / "model.safetensors"))
    for k, v in ck_off["model"].items():
        torch.testing.assert_close(exported[k], v.float(), rtol=0, atol=0, msg=k)
    (log_off,) = [json.loads(line) for line in (tmp_path / "off" / "log.jsonl").read_text().splitlines()]
    (log_on,) = [json.loads(line) for line in (tmp_path / "on" / "log.jsonl").read_text().splitlines()]
    assert "val_clean" in log_off and not any(k.startswith("val_ema") for k in log_off)
    assert {"val_ema_clean", "val_ema_cert36"} <= set(log_on)
    assert 0.0 <= log_on["val_ema_clean"] <= 1.0 and 0.0 <= log_on["val_ema_cert36"] <= log_on["val_ema_clean"]
    assert log_on["val_clean"] == log_off["val_clean"]  # the trained model's metrics are unchanged


def test_ema_matches_a_hand_computed_average(tmp_path, tiny_data):
    decay = 0.5
    r = _recipe(ema_decay=decay)
    params = []  # trained weights after 1, 2, 3 optimizer steps (runs are deterministic)
    for k in (1, 2, 3):
        train(r, tmp_path / f"s{k}", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=k)
        params.append(_ckpt(tmp_path / f"s{k}")["model"])
    torch.manual_seed(r.seed)  # the loop builds the model right after seeding: the initial weights
    init = lipzoo.create_model(r.model, num_classes=10, **r.model_args).state_dict()
    ema = _ckpt(tmp_path / "s3")["ema"]
    assert ema["updates"] == 3 and ema["decay"] == decay
    # warm-up: d_t = min(decay, (1 + t) / (10 + t)) -> 0.1, 2/11, 0.25
    ds = [min(decay, (1 + t) / (10 + t)) for t in range(3)]
    assert ds == pytest.approx([0.1, 2 / 11, 0.25])
    for name, value in ema["shadow"].items():
        expected = init[name].double()
        for d, p in zip(ds, params):
            expected = d * expected + (1 - d) * p[name].double()
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    # and it is not simply the last trained weights
    assert any(not torch.allclose(ema["shadow"][n], params[-1][n]) for n in ema["shadow"])


def test_ema_weights_are_exported_and_certified(tmp_path, tiny_data):
    from lipzoo import certification as certify

    r = _recipe(epochs=1, ema_decay=0.6)
    out = train(r, tmp_path / "run", data_root=str(tiny_data), fast=True, evaluate=True, progress=False,
                eval_subset=16)
    ck = _ckpt(tmp_path / "run")
    exported = load_file(str(tmp_path / "run" / "model.safetensors"))
    for name, value in ck["ema"]["shadow"].items():
        torch.testing.assert_close(exported[name], value.float().contiguous(), rtol=0, atol=0, msg=name)
    assert any(not torch.equal(exported[n], ck["model"][n].float().contiguous()) for n in ck["ema"]["shadow"])
    # the claims in results.json are the averaged model's: certify it independently from the exported file
    model = lipzoo.create_model(r.model, num_classes=10, **r.model_args)
    model.load_state_dict(exported)
    from lipzoo.data import load_cifar

    x, y = load_cifar("cifar10", "test", str(tiny_data))
    res = certify.certify(model, torch.from_numpy(x[:16]).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(y[:16]))
    claims = json.loads((tmp_path / "run" / "results.json").read_text())["claims"]
    assert claims["clean_accuracy"] == pytest.approx(res.clean_accuracy)
    assert out["claims"]["clean_accuracy"] == pytest.approx(res.clean_accuracy)


def test_resume_with_ema_is_exact(tmp_path, tiny_data):
    r = _recipe(ema_decay=0.8, val_split=16)  # 64 training images: 4 steps per epoch, 8 in all
    train(r, tmp_path / "full", data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    out = train(r, tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=3)
    assert out["step"] == 3 and _ckpt(tmp_path / "cut")["ema"]["updates"] == 3
    train(r, tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, resume=True)
    a, b = _ckpt(tmp_path / "full"), _ckpt(tmp_path / "cut")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], rtol=0, atol=0, msg=k)
    fa, fb = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    last = lambda d: json.loads((d / "log.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(tmp_path / "full")["val_ema_cert36"] == last(tmp_path / "cut")["val_ema_cert36"]
    assert last(tmp_path / "full")["val_ema_clean"] == last(tmp_path / "cut")["val_ema_clean"]
    # a different decay is a different recipe
    with pytest.raises(ValueError, match="recipe changed .*ema_decay"):
        train(r.replace(ema_decay=0.9), tmp_path / "cut", data_root=str(tiny_data), fast=False, evaluate=False,
              progress=False, resume=True)


def test_resume_of_a_checkpoint_older_than_a_recipe_field(tmp_path, tiny_data):
    r = _recipe()
    train(r, tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=2)
    ck = _ckpt(tmp_path / "run")
    del ck["recipe"]["ema_decay"]  # written before the field existed: it ran with the default (off)
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    out = train(r, tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, resume=True)
    assert out["finished"]
    with pytest.raises(ValueError, match="recipe changed .*ema_decay"):
        train(r.replace(ema_decay=0.5), tmp_path / "run", data_root=str(tiny_data), fast=False, evaluate=False,
              progress=False, resume=True)


def test_ema_decay_is_a_command_line_option():
    from lipzoo.cli.train import add_train_arguments, recipe_from_args

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    assert recipe_from_args(p.parse_args(["--recipe", "sandwich_cpu", "--out", "x", "--ema-decay", "0.999"])).ema_decay == 0.999
    assert recipe_from_args(p.parse_args(["--recipe", "sandwich_cpu", "--out", "x"])).ema_decay == 0.0


def test_long_sandwich_recipe_is_registered_and_valid():
    from lipzoo.train.loop import _augment_config, build_optimizer, build_scheduler
    from lipzoo.train.recipes import RECIPES, Recipe
    from lipzoo.cli.train import add_train_arguments, recipe_from_args

    assert all(r.name == k for k, r in RECIPES.items())
    r = get_recipe("sandwich_cpu_long")
    base = get_recipe("sandwich_cpu")
    assert r.model == base.model == "sandwich_xs"
    assert r.epochs > base.epochs and 0.99 <= r.ema_decay < 1.0 and r.val_split == 5000
    # the same optimisation as the published sandwich_xs otherwise
    same = {f for f in Recipe.__dataclass_fields__ if f not in ("name", "epochs", "ema_decay", "val_split", "description")}
    assert {f: getattr(r, f) for f in same} == {f: getattr(base, f) for f in same}
    model = lipzoo.create_model(r.model)
    assert sum(p.numel() for p in model.parameters()) <= 3_000_000
    opt = build_optimizer(model, r)
    sched = build_scheduler(opt, r, steps_per_epoch=(50_000 - r.val_split) // r.batch_size)
    assert _augment_config(r) is not None and sched.get_last_lr()[0] == 0.0
    json.dumps(r.to_dict())  # what checkpoint.pt and recipe.json record
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    assert recipe_from_args(p.parse_args(["--recipe", "sandwich_cpu_long", "--out", "x"])) == r


def test_initial_checkpoint_replaces_the_random_weights_and_is_recorded(tmp_path, tiny_data):
    import hashlib

    from safetensors.torch import save_file

    r = _recipe(epochs=1, lr=0.0, ema_decay=0.5)  # lr 0: the weights after the steps are the starting weights
    torch.manual_seed(123)
    start = lipzoo.create_model(r.model, num_classes=10, **r.model_args).state_dict()
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.items()}, str(weights))
    train(r, tmp_path / "random", data_root=str(tiny_data), fast=False, evaluate=False, progress=False, max_steps=1)
    train(r, tmp_path / "warm", data_root=str(tiny_data), fast=False, evaluate=True, progress=False, max_steps=None,
          eval_subset=16, initial_checkpoint=weights)
    warm, random = _params(tmp_path / "warm"), _params(tmp_path / "random")
    for k, v in start.items():
        torch.testing.assert_close(warm[k], v, rtol=0, atol=0, msg=k)
    assert any(not torch.equal(random[k], v) for k, v in start.items())
    # the exported (averaged) weights are the starting weights too: the average starts from them
    exported = load_file(str(tmp_path / "warm" / "model.safetensors"))
    for k, v in start.items():
        if v.is_floating_point():
            torch.testing.assert_close(exported[k], v, rtol=0, atol=0, msg=k)
    record = {"file": "start.safetensors", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert json.loads((tmp_path / "warm" / "initial_checkpoint.json").read_text()) == record
    assert json.loads((tmp_path / "warm" / "results.json").read_text())["initial_checkpoint"] == record
    assert not (tmp_path / "random" / "initial_checkpoint.json").exists()


def test_a_resumed_run_refuses_another_initial_checkpoint(tmp_path, tiny_data):
    from safetensors.torch import save_file

    r = _recipe()
    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = lipzoo.create_model(r.model, num_classes=10, **r.model_args).state_dict()
        files.append(tmp_path / f"w{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(files[-1]))
    kw = dict(data_root=str(tiny_data), fast=False, evaluate=False, progress=False)
    train(r, tmp_path / "run", max_steps=1, initial_checkpoint=files[0], **kw)
    with pytest.raises(ValueError, match="it started from .*w1.safetensors.*not from w2.safetensors"):
        train(r, tmp_path / "run", max_steps=2, resume=True, initial_checkpoint=files[1], **kw)
    with pytest.raises(ValueError, match="it started from random weights"):
        train(r, tmp_path / "other", max_steps=1, **kw)
        train(r, tmp_path / "other", max_steps=2, resume=True, initial_checkpoint=files[0], **kw)
    train(r, tmp_path / "run", max_steps=2, resume=True, **kw)  # the recorded start is kept
    assert json.loads((tmp_path / "run" / "initial_checkpoint.json").read_text())["file"] == "w1.safetensors"


def test_initial_checkpoint_that_is_not_a_file_is_one_line(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "lipzoo", "train", "--recipe", "sll_cpu", "--out", str(tmp_path / "r"),
                        "--initial-checkpoint", str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--initial-checkpoint" in p.stderr and "is not a file" in p.stderr
