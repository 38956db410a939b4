"""The ``lipzoo`` command line (issue 22, items 3 and 4): a mistake ends in one line on stderr naming the problem,
exit code 2 and no traceback (the traceback with ``--debug`` / ``LIPZOO_DEBUG=1``); commands that would silently do
the wrong thing refuse or do what their options say; ``lipzoo --help`` does not import torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``lipzoo ARGV`` in this process: (exit code, stdout, stderr)."""
    from lipzoo.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _run_subprocess(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipzoo.cli", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """sll_xs weights (10 classes), sll_xs weights for 100 classes, lot_xs weights, and broken files."""
    import torch
    from safetensors.torch import save_file

    import lipzoo

    d = tmp_path_factory.mktemp("ckpt")

    def save(name: str, arch: str, **kwargs) -> Path:
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in lipzoo.create_model(arch, **kwargs).state_dict().items()}
        save_file(state, str(d / name))
        return d / name

    files = {"sll_xs": save("sll_xs.safetensors", "sll_xs"),
             "sll_xs_100": save("sll_xs_100.safetensors", "sll_xs", num_classes=100),
             "lot_xs": save("lot_xs.safetensors", "lot_xs")}
    data = files["sll_xs"].read_bytes()
    files["truncated"] = d / "truncated.safetensors"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"] = d / "garbage.safetensors"
    files["garbage"].write_bytes(b"this is not a checkpoint\n" * 40)
    files["garbage_pt"] = d / "garbage.pt"
    files["garbage_pt"].write_bytes(b"\x00\x01 nothing torch.load can read " * 40)
    return files


# ------------------------------------------------------------------------------------------------ item 3
def test_a_misspelled_model_is_one_line_naming_it_and_the_closest_names(capsys):
    rc, _, err = _cli(capsys, "info", "sll_xss")
    _assert_user_error(rc, err, "sll_xss", "sll_xs", "lipzoo list")


def test_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nope.safetensors"
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(missing), "--n", "4")
    _assert_user_error(rc, err, str(missing), "does not exist")


def test_a_truncated_safetensors_checkpoint_is_named_as_truncated(capsys, checkpoints):
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["truncated"]), "--n", "4")
    _assert_user_error(rc, err, str(checkpoints["truncated"]), "truncated safetensors file")


def test_a_garbage_checkpoint_is_named_as_not_a_safetensors_file(capsys, checkpoints):
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["garbage"]), "--n", "4")
    _assert_user_error(rc, err, str(checkpoints["garbage"]), "not a safetensors file")
    rc, _, err = _cli(capsys, "audit", "sll_xs", "--checkpoint", str(checkpoints["garbage_pt"]), "--n", "4")
    _assert_user_error(rc, err, str(checkpoints["garbage_pt"]), "could not be read")


def test_the_python_api_names_the_file_of_a_broken_safetensors_checkpoint(checkpoints):
    import lipzoo
    from lipzoo.convert import ConversionError

    with pytest.raises(ConversionError, match="truncated safetensors file") as e:
        lipzoo.create_model("sll_xs", checkpoint_path=checkpoints["truncated"])
    assert str(checkpoints["truncated"]) in str(e.value)
    with pytest.raises(ConversionError, match="not a safetensors file"):
        lipzoo.create_model("sll_xs", checkpoint_path=checkpoints["garbage"])


def test_a_run_folder_is_read_through_its_model_safetensors(capsys, checkpoints, tmp_path):
    import shutil

    import torch

    import lipzoo

    run = tmp_path / "run"
    run.mkdir()
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(run), "--n", "4")
    _assert_user_error(rc, err, str(run), "without model.safetensors")
    shutil.copy(checkpoints["sll_xs"], run / "model.safetensors")
    model = lipzoo.create_model("sll_xs", checkpoint_path=run)
    torch.manual_seed(0)
    reference = lipzoo.create_model("sll_xs")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_a_wrong_checkpoint_format_is_refused_by_argparse_up_front(capsys, checkpoints, monkeypatch):
    import lipzoo.cli.certify as cli_certify

    def no_model(*a, **k):  # the choice must be checked before any model is built
        raise AssertionError("model built before --checkpoint-format was checked")

    monkeypatch.setattr(cli_certify, "_load_model", no_model)
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["sll_xs"]),
                      "--checkpoint-format", "sll-legacyy")
    assert rc == 2 and "Traceback" not in err
    assert "--checkpoint-format" in err and "invalid choice" in err and "sll-legacy" in err


def test_weights_of_another_architecture_are_one_line(capsys, checkpoints):
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["lot_xs"]), "--n", "4")
    _assert_user_error(rc, err, str(checkpoints["lot_xs"]), "sll_xs")
    assert "does not match" in err or "does not fit" in err


def test_weights_of_another_class_count_are_one_line(capsys, checkpoints):
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["sll_xs_100"]), "--n", "4")
    _assert_user_error(rc, err, str(checkpoints["sll_xs_100"]), "does not fit sll_xs (10 classes)", "size mismatch",
                       "number of classes")


def test_an_unknown_recipe_is_one_line_listing_the_recipes(capsys, tmp_path):
    rc, _, err = _cli(capsys, "train", "--recipe", "sll_cpuu", "--out", str(tmp_path / "run"))
    _assert_user_error(rc, err, "unknown recipe 'sll_cpuu'", "sll_cpu")
    assert not (tmp_path / "run").exists()


def test_an_existing_run_folder_is_refused_before_training_starts(capsys, tmp_path, monkeypatch):
    import lipzoo.train.loop as loop

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "train", no_training)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    rc, _, err = _cli(capsys, "train", "--recipe", "sll_cpu", "--out", str(run))
    _assert_user_error(rc, err, str(run), "--resume", "new --out")


def test_debug_and_lipzoo_debug_show_the_traceback():
    plain = _run_subprocess("info", "sll_xss")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "sll_xss" in plain.stderr
    debug = _run_subprocess("info", "sll_xss", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UnknownModelError" in debug.stderr
    env = _run_subprocess("info", "sll_xss", env={"LIPZOO_DEBUG": "1"})
    assert env.returncode != 0 and "Traceback" in env.stderr


# ------------------------------------------------------------------------------------------------ item 4
@pytest.mark.parametrize("command", ["certify", "audit"])
def test_random_weights_are_refused_unless_asked_for(capsys, command, monkeypatch):
    rc, _, err = _cli(capsys, command, "sll_xs", "--n", "100")
    _assert_user_error(rc, err, "sll_xs", "--pretrained", "--checkpoint", "--random-init")


def test_random_init_certifies_untrained_weights_on_purpose(capsys, cifar10_available):
    if not cifar10_available:
        pytest.skip("no offline CIFAR-10 copy")
    rc, out, err = _cli(capsys, "certify", "sll_xs", "--random-init", "--n", "8", "--quiet")
    assert rc == 0, err
    assert "n=8" in out


def test_a_checkpoint_certifies(capsys, checkpoints, cifar10_available):
    if not cifar10_available:
        pytest.skip("no offline CIFAR-10 copy")
    rc, out, err = _cli(capsys, "certify", "sll_xs", "--checkpoint", str(checkpoints["sll_xs"]), "--n", "8", "--quiet")
    assert rc == 0, err
    assert "n=8" in out


class _FakeReport:
    passed = True

    def to_markdown(self) -> str:
        return "fake report"


@pytest.fixture
def fake_verify(monkeypatch):
    """Record what ``lipzoo verify`` would verify, without downloading or certifying anything."""
    import lipzoo.cli.certify as cli_certify
    import lipzoo.verification as verify_module

    seen: dict = {}

    def load_model(args, dataset, verify_download=True):
        seen["model"], seen["dataset"], seen["verify_download"] = args.model, dataset, verify_download
        return object()

    def verify(model, claims, **kwargs):
        seen["claims"] = claims
        return _FakeReport()

    monkeypatch.setattr(cli_certify, "_load_model", load_model)
    monkeypatch.setattr(verify_module, "verify", verify)
    return seen


def _published(name: str) -> dict:
    from lipzoo.models._registry import published_weights

    return published_weights()[name]["claims"]


@pytest.mark.parametrize("argv", [["sll_xs.cifar10"], ["sll_xs", "--pretrained"], ["sll-xs", "--pretrained"]])
def test_verify_uses_the_published_claims_by_default(capsys, fake_verify, argv):
    rc, out, err = _cli(capsys, "verify", *argv, "--quick")
    assert rc == 0, err
    assert fake_verify["claims"] == _published("sll_xs.cifar10")
    assert fake_verify["dataset"] == "cifar10" and "fake report" in out


def test_verify_reads_the_claims_of_a_published_config_json(capsys, fake_verify):
    config = REPO / "hub" / "lipzoo" / "soc_xs.cifar10" / "config.json"
    rc, _, err = _cli(capsys, "verify", "sll_xs.cifar10", "--claims", str(config))
    assert rc == 0, err
    assert fake_verify["claims"] == json.loads(config.read_text())["lipzoo"]["claims"]


def test_verify_claims_mistakes_are_one_line(capsys, fake_verify, tmp_path, checkpoints):
    bad = tmp_path / "claims.json"
    bad.write_text("{not json")
    rc, _, err = _cli(capsys, "verify", "sll_xs.cifar10", "--claims", str(bad))
    _assert_user_error(rc, err, str(bad), "not a JSON file")
    bad.write_text('{"hello": 1}')
    rc, _, err = _cli(capsys, "verify", "sll_xs.cifar10", "--claims", str(bad))
    _assert_user_error(rc, err, str(bad), "no claims record")
    rc, _, err = _cli(capsys, "verify", "sll_xs.cifar10", "--claims", str(tmp_path / "missing.json"))
    _assert_user_error(rc, err, "missing.json")
    rc, _, err = _cli(capsys, "verify", "sll_xs", "--checkpoint", str(checkpoints["sll_xs"]))
    _assert_user_error(rc, err, "--claims")
    rc, _, err = _cli(capsys, "verify", "sll_xs")
    _assert_user_error(rc, err, "--pretrained", "--checkpoint")
    assert "claims" not in fake_verify


def test_run_honours_data_and_n(capsys, monkeypatch, tmp_path):
    import contextlib
    from types import SimpleNamespace

    import lipzoo.hub.server as server
    import lipzoo.cli.run as run

    data = REPO.parent / "shared" / "data"
    if not (data / "cifar10" / "test_batch.webp").exists():
        pytest.skip("no offline CIFAR-10 copy")
    calls = []
    monkeypatch.setattr(run, "_best_published", lambda: "sll_xs.cifar10")
    monkeypatch.setattr(server, "LocalHub", lambda root: contextlib.nullcontext(SimpleNamespace(endpoint="http://x")))
    monkeypatch.setattr(run, "_download_and_verify_in_subprocess", lambda name, env, n: calls.append((name, env, n)) or 0)
    rc, _, err = _cli(capsys, "run", "--data", str(data), "--n", "100")
    assert rc == 0, err
    (name, env, n), = calls
    assert name == "sll_xs.cifar10" and n == 100 and env["LIPZOO_DATA"] == str(data.resolve())
    # a folder without CIFAR-10 is refused before the hub starts
    calls.clear()
    rc, _, err = _cli(capsys, "run", "--data", str(tmp_path), "--n", "100")
    _assert_user_error(rc, err, str(tmp_path), "cifar10")
    assert calls == []


def test_run_with_n_certifies_only_the_first_n_images(capsys, monkeypatch, cifar10_available):
    """The child of ``lipzoo run --n N``: sha256-checked download without the full verification, then the first N
    test images certified beside the published claims."""
    if not cifar10_available:
        pytest.skip("no offline CIFAR-10 copy")
    import timm
    import torch

    import lipzoo
    import lipzoo.hub.download as download
    import lipzoo.cli.run as run

    asked = {}
    monkeypatch.setattr(download, "download_and_report", lambda name, verify=None: asked.update(verify=verify) or 0)

    def create_model(name, pretrained=False, **kwargs):  # the registered cfg of the published weights, no download
        asked["create"] = (name, pretrained, kwargs.get("verify"))
        torch.manual_seed(0)
        return timm.create_model("sll_xs.cifar10")

    monkeypatch.setattr(lipzoo, "create_model", create_model, raising=False)
    assert run.download_and_evaluate("sll_xs.cifar10", n=12) == 0
    out = capsys.readouterr().out
    assert asked["verify"] is False and asked["create"] == ("sll_xs.cifar10", True, False)
    assert "first 12 test images" in out
    claimed = _published("sll_xs.cifar10")["clean_accuracy"]
    assert f"claimed {100 * claimed:6.2f}%" in out


# --------------------------------------------------------------------------------------------- start-up
def test_the_command_line_parser_does_not_import_torch():
    """``lipzoo --help`` stays fast: neither ``import lipzoo`` nor building every subcommand's parser imports torch or
    timm (the measured time is in the README's benchmark section)."""
    code = ("import sys, lipzoo, lipzoo.cli\n"
            "lipzoo.cli.build_parser().format_help()\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'numpy', 'safetensors') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True, timeout=300)
    assert "HEAVY []" in out.stdout
    help_out = _run_subprocess("--help")
    assert help_out.returncode == 0 and "certify" in help_out.stdout and "--debug" in help_out.stdout


def test_import_lipzoo_still_registers_the_architectures_in_timm():
    """``import lipzoo`` is lazy, yet timm knows every architecture once it is imported, in either order."""
    for code in ("import lipzoo, timm; print(sorted(timm.list_models('sll_x*')))",
                 "import timm, lipzoo; print(sorted(timm.list_models('sll_x*')))",
                 "import lipzoo; m = lipzoo.create_model('sll-xs'); import timm; print(sorted(timm.list_models('sll_x*')))"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                             timeout=300)
        assert "['sll_xl', 'sll_xs']" in out.stdout, (code, out.stderr)
