"""The catalogue of bad input (docs/reliability.md): every case a user can cause gives a
one-line error naming the file or value and the fix, exit code 2 (1 where some outputs were
written), no traceback, nothing partial that looks complete. Each CASES row is one row of
the catalogue (its id is the test id there). Run ``python tests/test_reliability.py`` to
print the table's rows with the messages as fcnseg prints them today."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import make_camvid, random_image, truncate, write_gray, write_rgb

from fcnseg.cli import main
from fcnseg.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# id -> (the case, argv, exit code, fragments the message must hold). "{ws}": the workspace.
CASES: dict[str, tuple[str, list[str], int, list[str]]] = {
    # ---- arguments and configs
    "train-unknown-model": ('a model name that does not exist', ["train", "--model", "fcn9s"], 2, ["unknown model 'fcn9s'", "fcn8s"]),
    "train-unknown-backbone": ('a backbone name that does not exist', ["train", "--backbone", "resnet7"], 2, ["resnet7", "resnet18"]),
    "train-crop-three-numbers": ('a crop of three numbers', ["train", "--crop", "64", "64", "64"], 2, ["crop must be one or two"]),
    "train-batch-size-0": ('a batch size of 0', ["train", "--batch-size", "0"], 2, ["batch_size", "0"]),
    "train-negative-lr": ('a negative learning rate', ["train", "--lr", "-0.1"], 2, ["lr", "-0.1"]),
    "train-fp16-on-cpu": ('fp16 asked for on a CPU', ["train", "--precision", "fp16", "--device", "cpu"], 2, ["fp16 needs a GPU", "bf16"]),
    "train-cuda-without-gpu": ('--device cuda on a machine without a GPU', ["train", "--device", "cuda"], 2, ["cuda", "no CUDA GPU"]),
    "train-config-missing": ('a config file that does not exist', ["train", "--config", "{ws}/nowhere.yaml"], 2, ["{ws}/nowhere.yaml"]),
    "train-config-unknown-key": ('a config key misspelt', ["train", "--config", "{ws}/unknown_key.yaml"], 2, ["unknown config key 'epoch'", "epochs"]),
    "train-config-not-yaml": ('a config file that is not YAML', ["train", "--config", "{ws}/not_yaml.yaml"], 2, ["{ws}/not_yaml.yaml"]),
    "train-config-wrong-type": ('a config value of the wrong type', ["train", "--config", "{ws}/wrong_type.yaml"], 2, ["lr", "fast"]),
    "train-data-option-no-equals": ('a dataset option without KEY=VALUE', ["train", "--data-option", "border"], 2, ["--data-option 'border'", "KEY=VALUE"]),
    "train-out-is-a-file": ('--out naming an existing file (was: FileExistsError traceback)', ["train", "--out", "{ws}/a_file"], 2, ["{ws}/a_file", "file"]),
    # ---- datasets
    "train-unknown-dataset": ('a dataset name that does not exist', ["train", "--data", "imagenet21k"], 2, ["imagenet21k", "camvid"]),
    "train-data-root-missing": ('a dataset folder that does not exist', ["train", "--data", "camvid", "--data-root", "{ws}/nowhere"], 2, ["{ws}/nowhere", "does not exist"]),
    "train-data-root-empty": ('an empty dataset folder', ["train", "--data", "camvid", "--data-root", "{ws}/empty"], 2, ["{ws}/empty"]),
    "train-corrupt-image": ('a training image that is not an image', ["train", "--data", "camvid", "--data-root", "{ws}/camvid_corrupt"], 2, ["0001TP_train0000.png", "--skip-check"]),
    "train-mask-bad-values": ('a mask with values outside the classes', ["train", "--data", "camvid", "--data-root", "{ws}/camvid_values"], 2, ["0001TP_train0001.png", "42"]),
    "train-mask-size-mismatch": ('a mask of another size than its image', ["train", "--data", "camvid", "--data-root", "{ws}/camvid_size"], 2, ["0001TP_train0002.png"]),
    "data-check-bad-dataset": ('`data check` on a dataset with a bad file (a report, exit 1)', ["data", "check", "--data", "camvid", "--data-root", "{ws}/camvid_corrupt"], 1, ["0001TP_train0000.png"]),
    # ---- checkpoints and weight files
    "train-weights-missing": ('--weights naming no file', ["train", "--weights", "{ws}/nowhere.pt"], 2, ["{ws}/nowhere.pt", "no such file"]),
    "train-weights-other-classes": ('--weights from a model with another class count', ["train", "--weights", "{ws}/five.pt"], 2, ["predicts 5 classes", "--init-from"]),
    "train-weights-crafted-pickle": ('--weights: a crafted pickle that would run a command', ["train", "--weights", "{ws}/evil.pt"], 2, ["refused to load", "{ws}/evil.pt", "posix.system"]),
    "train-init-from-crafted-pickle": ('--init-from: a crafted pickle', ["train", "--init-from", "{ws}/evil.pt"], 2, ["refused to load", "{ws}/evil.pt"]),
    "train-init-from-missing": ('--init-from naming no file', ["train", "--init-from", "{ws}/nowhere.pt"], 2, ["{ws}/nowhere.pt", "not found"]),
    "train-resume-nothing-to-resume": ('--resume in a folder with no last.pt', ["train", "--resume", "--out", "{ws}/empty"], 2, ["{ws}/empty/last.pt", "not found"]),
    "train-resume-crafted-pickle": ('--resume: a crafted pickle', ["train", "--resume", "{ws}/evil.pt"], 2, ["refused to load", "{ws}/evil.pt"]),
    "train-resume-truncated": ('--resume: a checkpoint cut short (interrupted copy)', ["train", "--resume", "{ws}/truncated.pt"], 2, ["{ws}/truncated.pt", "damaged"]),
    "eval-checkpoint-missing": ('a checkpoint that does not exist', ["eval", "--checkpoint", "{ws}/nowhere.pt"], 2, ["{ws}/nowhere.pt", "not found", "best.pt"]),
    "eval-checkpoint-is-a-folder": ('a run folder given as the checkpoint', ["eval", "--checkpoint", "{ws}/run"], 2, ["{ws}/run", "folder", "best.pt"]),
    "eval-checkpoint-truncated": ('a checkpoint cut short', ["eval", "--checkpoint", "{ws}/truncated.pt"], 2, ["{ws}/truncated.pt", "damaged"]),
    "eval-checkpoint-not-torch": ('a text file given as the checkpoint', ["eval", "--checkpoint", "{ws}/text.pt"], 2, ["{ws}/text.pt", "not a PyTorch file"]),
    "eval-checkpoint-crafted-pickle": ('a crafted pickle given as the checkpoint', ["eval", "--checkpoint", "{ws}/evil.pt"], 2, ["refused to load", "{ws}/evil.pt", "posix.system"]),
    "eval-checkpoint-state-dict-only": ('a bare state dict given as the checkpoint', ["eval", "--checkpoint", "{ws}/state_dict.pt"], 2, ["{ws}/state_dict.pt", "not an fcnseg checkpoint", "best.pt"]),
    "eval-checkpoint-weights-entry": ('a checkpoint whose model_config names weights to load (was: loading fetched them from the network)', ["eval", "--checkpoint", "{ws}/weights_entry.pt"], 2, ["{ws}/weights_entry.pt", "'weights'", "fetch"]),
    "eval-checkpoint-huge-class-count": ('a checkpoint declaring 100,000 classes (was: the model built before any check)', ["eval", "--checkpoint", "{ws}/huge.pt"], 2, ["{ws}/huge.pt", "num_classes=100000", "1..255"]),
    "eval-unknown-split": ('a split the dataset does not have', ["eval", "--checkpoint", "{ws}/run/best.pt", "--split", "nosuch"], 2, ["nosuch"]),
    "eval-other-class-count": ('a dataset with another class count than the checkpoint', ["eval", "--checkpoint", "{ws}/run/best.pt", "--data", "camvid", "--data-root", "{ws}/camvid_ok"], 2, ["3", "11"]),
    "eval-bad-tta": ('a TTA spec that cannot be read', ["eval", "--checkpoint", "{ws}/run/best.pt", "--tta", "spin"], 2, ["spin", "flip"]),
    # ---- images (predict)
    "predict-out-is-a-file": ('--out naming an existing file (was: FileExistsError traceback)', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images/a.png", "--out", "{ws}/a_file"], 2, ["{ws}/a_file", "file"]),
    "predict-input-missing": ('an input image that does not exist', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/nowhere.jpg", "--out", "{ws}/pred_missing"], 2, ["{ws}/nowhere.jpg"]),
    "predict-folder-without-images": ('an input folder without images', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/empty", "--out", "{ws}/pred_empty"], 2, ["{ws}/empty"]),
    "predict-corrupt-image": ('one of two images cut short (the other is segmented, exit 1)', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images", "--out", "{ws}/pred_corrupt"], 1, ["{ws}/images/broken.jpg", "1 of 2"]),
    "predict-eps-named-jpg": ('an EPS file named .jpg (was: handed to Ghostscript)', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/eps", "--out", "{ws}/pred_eps"], 1, ["{ws}/eps/photo.jpg", "PNG, JPEG, BMP, TIFF, WebP and PPM only"]),
    "predict-bad-alpha": ('an overlay opacity outside [0, 1]', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images/a.png", "--out", "{ws}/pred_alpha", "--alpha", "2"], 2, ["alpha", "2"]),
    # ---- nothing on disk replaced unasked
    "train-out-holds-a-run": ('--out naming a folder that holds a run (was: its checkpoints and metrics silently replaced)', ["train", "--out", "{ws}/run"], 2, ["--out {ws}/run holds a run", "--resume --out {ws}/run", "--out {ws}/run-2", "--overwrite"]),
    "predict-out-is-the-input-folder": ('--out the inputs\' own folder, where a.png\'s mask would replace a.png (was: replaced)', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images", "--out", "{ws}/images"], 2, ["output {ws}/images/a.png would replace the input {ws}/images/a.png", "another --out"]),
    "predict-outputs-exist": ('--out holding the outputs of an earlier run (was: replaced)', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images/a.png", "--out", "{ws}/pred_done"], 2, ["--out {ws}/pred_done already holds 1 of the outputs ({ws}/pred_done/a.png)", "--skip-existing", "--overwrite"]),
    "predict-bad-sliding-window": ('a sliding-window size that is not a size', ["predict", "--checkpoint", "{ws}/run/best.pt", "{ws}/images/a.png", "--out", "{ws}/pred_sw", "--sliding-window", "big"], 2, ["big"]),
}


# --------------------------------------------------------------------------- workspace


def _tiny_run(out: Path) -> Path:
    """A real training run, as small as the trainer allows (plain SGD: small checkpoints)."""
    from fcnseg.training.train import train

    return train(dict(
        data="synthetic", data_options={"size": 32, "length": 4}, model="fcn32s", backbone="resnet18",
        upsample="bilinear", crop=[32, 32], batch_size=2, epochs=1, warmup_steps=0, optimizer="sgd",
        momentum=0.0, eval_batch_size=4, num_samples=0, tensorboard=False, out=str(out), device="cpu",
        precision="fp32",
    ))  # fmt: skip


class _Evil:
    """Unpickling it runs a shell command that creates MARKER (what a crafted file could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_workspace(tmp_path_factory.mktemp("ws"))
    finally:
        torch.set_num_threads(threads)


def build_workspace(ws: Path) -> Path:
    """The files the cases name: a tiny run, bad checkpoints, configs, datasets, images."""
    run = _tiny_run(ws / "run")
    ckpt = torch.load(run / "best.pt", weights_only=True)
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "num_classes": 5}}, ws / "five.pt")
    torch.save({"model": _Evil(ws / "MARKER"), "model_config": {}}, ws / "evil.pt")
    torch.save(ckpt["model"], ws / "state_dict.pt")
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "weights": "imagenet"}}, ws / "weights_entry.pt")
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "num_classes": 100_000}}, ws / "huge.pt")
    (ws / "truncated.pt").write_bytes((run / "best.pt").read_bytes()[:100_000])
    (ws / "text.pt").write_text("not a checkpoint\n")
    (ws / "a_file").write_text("in the way\n")
    (ws / "empty").mkdir()
    (ws / "unknown_key.yaml").write_text("epoch: 3\n")
    (ws / "not_yaml.yaml").write_text("lr: [0.1\nepochs: 2\n")
    (ws / "wrong_type.yaml").write_text("lr: fast\n")
    for name in ("camvid_ok", "camvid_corrupt", "camvid_values", "camvid_size"):
        make_camvid(ws / name)
    (ws / "camvid_corrupt" / "train" / "0001TP_train0000.png").write_bytes(b"this is no image at all")
    write_gray(ws / "camvid_values" / "trainannot" / "0001TP_train0001.png", np.full((24, 32), 42, np.uint8))
    write_gray(ws / "camvid_size" / "trainannot" / "0001TP_train0002.png", np.zeros((20, 32), np.uint8))
    write_rgb(ws / "images" / "a.png", random_image(np.random.default_rng(0), 37, 53))
    write_rgb(ws / "images" / "broken.jpg", random_image(np.random.default_rng(1), 37, 53), quality=90)
    truncate(ws / "images" / "broken.jpg", 0.3)
    (ws / "eps").mkdir()
    _eps(ws / "eps" / "photo.jpg")
    write_rgb(ws / "eps" / "fine.png", random_image(np.random.default_rng(2), 19, 23))
    (ws / "pred_done").mkdir()
    (ws / "pred_done" / "a.png").write_bytes(b"an earlier run's mask")
    return ws


def _eps(path: Path) -> Path:
    """An Encapsulated PostScript file (Pillow decodes EPS by running Ghostscript)."""
    from PIL import Image

    Image.fromarray(random_image(np.random.default_rng(3), 12, 16)).save(path, format="EPS")
    return path


def _argv(argv: list[str], ws: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)) for a in argv]


def _outside_run_argv(argv: list[str], ws: Path, case: str) -> list[str]:
    """``fcnseg train`` cases get their own --out (nothing is trained: they stop before)."""
    argv = _argv(argv, ws)
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(ws / "runs" / case)]
    return argv


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_fault_and_the_fix(case, ws, capsys, monkeypatch):
    _, argv, code, fragments = CASES[case]
    monkeypatch.chdir(ws)
    rc = main(_outside_run_argv(argv, ws, case))  # an uncaught exception fails the test here
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert rc == code, err
    assert "Traceback" not in err, err
    if code == 2:
        assert len(lines) == 1, err  # one line
    else:  # a report (data check), or the files that failed (predict): the rest was done
        lines = (out + err).splitlines()
    for fragment in fragments:
        fragment = fragment.replace("{ws}", str(ws))
        assert any(fragment in line for line in lines), (fragment, err)
    assert not (ws / "MARKER").exists(), "a crafted checkpoint ran code"


def test_crafted_checkpoint_in_a_real_process_runs_nothing(ws):
    proc = subprocess.run(
        [sys.executable, "-m", "fcnseg", "predict", "--checkpoint", str(ws / "evil.pt"), str(ws / "images" / "a.png"), "--out", str(ws / "p")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"fcnseg predict: error: refused to load checkpoint {ws / 'evil.pt'}: it holds posix.system, which fcnseg "
        "files never hold and whose loading could run code; use a checkpoint written by fcnseg (RUN/best.pt), or, "
        "only if you trust the file, re-save its tensors: torch.save(torch.load(FILE, weights_only=False)['model'], 'weights.pt')"
    ]
    assert not (ws / "MARKER").exists() and not (ws / "p").exists()


def test_checkpoints_are_plain_data_and_older_ones_still_load(ws):
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint

    # today's files read with nothing allow-listed
    ckpt = torch.load(ws / "run" / "last.pt", weights_only=True)
    assert ckpt["rng"]["numpy"][0] == "MT19937" and isinstance(ckpt["rng"]["numpy"][1], list)
    # the format fcnseg wrote before: the numpy RNG key as an ndarray, numpy metric values
    legacy = {**ckpt, "rng": {**ckpt["rng"], "numpy": np.random.get_state()}, "best_miou": np.float64(ckpt["best_miou"])}
    torch.save(legacy, ws / "legacy.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ws / "legacy.pt")  # needs the allow-list
    got = load_checkpoint(ws / "legacy.pt")
    np.testing.assert_array_equal(got["rng"]["numpy"][1], np.random.get_state()[1])
    assert got["best_miou"] == ckpt["best_miou"]
    model = model_from_checkpoint(got)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(ws, monkeypatch, capsys):
    """An older-format last.pt resumed (it loads and restores), then ENOSPC injected into the
    file write of the next checkpoint (as a full tmpfs gives it): exit 2, one line naming the
    file and saying what to do, the previous last.pt intact and loadable, no temp file left."""
    import io

    import fcnseg.checkpoint as ckpt_mod
    from fcnseg.checkpoint import load_checkpoint

    if not (ws / "legacy.pt").exists():
        test_checkpoints_are_plain_data_and_older_ones_still_load(ws)
    out = ws / "full"
    out.mkdir()
    before = (ws / "legacy.pt").read_bytes()
    (out / "last.pt").write_bytes(before)
    real_save = torch.save

    def save_until_full(obj, f, *a, **kw):
        class Full(io.RawIOBase):
            written = 0

            def writable(self):
                return True

            def write(self, b):
                Full.written += len(b)
                if Full.written > 50_000:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return f.write(b)

        return real_save(obj, Full(), *a, **kw)

    monkeypatch.setattr(ckpt_mod.torch, "save", save_until_full)
    capsys.readouterr()
    rc = main(["train", "--resume", "--out", str(out), "--epochs", "2", "--ckpt-every-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    line = [x for x in err.splitlines() if ": error: " in x]
    assert len(line) == 1, err
    assert f"cannot write checkpoint {out / 'last.pt'}: the disk is full" in line[0]
    assert "the previous last.pt is intact" in line[0] and "free space" in line[0] and "--resume" in line[0]
    assert (out / "last.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".tmp")) == ["last.pt"]
    assert load_checkpoint(out / "last.pt")["step"] == 2


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["sigint", "sigterm"])
def test_ctrl_c_or_sigterm_leaves_a_resumable_last_pt(ws, monkeypatch, capsys, sig, code, said):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) in the middle of training: one line,
    exit 130 / 143, the last checkpoint written stays intact and --resume continues from it."""
    import fcnseg.checkpoint as ckpt_mod
    from fcnseg.checkpoint import load_checkpoint

    out = ws / f"signal_{sig.name}"
    real_replace = os.replace

    def replace_then_signal(src, dst):  # the first checkpoint of the resumed run (step 3) is in place
        real_replace(src, dst)
        if Path(dst).name == "last.pt":
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace_then_signal)
    # Ctrl-C as a terminal delivers it: a shell starts background jobs (`pytest ... &`, CI
    # scripts) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = main(["train", "--resume", str(ws / "run" / "last.pt"), "--out", str(out), "--epochs", "2", "--ckpt-every-steps", "1"])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert rc == code and f"fcnseg train: {said}" in err and "Traceback" not in err, err
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert not list(out.glob("*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() restored the handler
    monkeypatch.undo()
    if sig == signal.SIGINT:
        assert main(["train", "--resume", "--out", str(out)]) == 0
        assert load_checkpoint(out / "last.pt")["step"] == 4


# --------------------------------------------------------------------------- nothing replaced unasked


@pytest.mark.parametrize("where", ["predict", "serve"])
def test_eps_is_never_handed_to_ghostscript(ws, tmp_path, monkeypatch, capsys, where):
    """Only the raster plugins are tried: an EPS file (named .jpg) is refused by name and
    Ghostscript never starts (the old open_image identified it as EPS and ran gs)."""
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **kw: ran.append(a) or (_ for _ in ()).throw(OSError("gs")))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    if where == "predict":
        rc = main(["predict", "--checkpoint", str(ws / "run" / "best.pt"), str(ws / "eps" / "photo.jpg"), "--out", str(tmp_path / "o")])
        assert rc == 1 and "PNG, JPEG, BMP, TIFF, WebP and PPM only" in capsys.readouterr().err
    else:
        pytest.importorskip("fastapi")
        from fcnseg.serve.app import ServeError, open_upload

        with pytest.raises(ServeError) as e:
            open_upload((ws / "eps" / "photo.jpg").read_bytes(), 10**6).load()
        assert e.value.status == 415
    assert ran == []



def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """runs/<timestamp> is created exclusively: eight runs named in the same second (as
    eight processes started together would) get eight folders (the old code gave all eight
    the same name, created later, so they shared one)."""
    import threading

    from fcnseg.training import runlog

    class Frozen(runlog.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 7, 1, 2, 3)

    monkeypatch.setattr(runlog, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    got: list[Path] = []
    cfg = TrainConfig()  # out, name, resume: None
    threads = [threading.Thread(target=lambda: got.append(runlog.new_run_dir(cfg))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == ["20261207-010203"] + [f"20261207-010203-{k}" for k in range(1, 8)]
    assert all(p.is_dir() for p in got)


def test_a_run_name_in_use_is_refused_and_overwrite_replaces_it(ws, monkeypatch, capsys):
    """--name NAME holding a run stops with the free name; --overwrite trains into it and
    leaves no file of the old run (its best.pt with a higher score would otherwise stay)."""
    monkeypatch.chdir(ws)
    (ws / "runs" / "taken").mkdir(parents=True, exist_ok=True)
    (ws / "runs" / "taken" / "best.pt").write_bytes(b"the earlier run's best")
    (ws / "runs" / "taken" / "notes.txt").write_text("mine\n")
    capsys.readouterr()
    assert main(["train", "--name", "taken"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"fcnseg train: error: --name taken holds a run ({Path('runs/taken/best.pt')}); continue it with "
        f"`fcnseg train --resume --out {Path('runs/taken')}`, start a new one with --name taken-2, or pass --overwrite to replace it"
    )
    assert (ws / "runs" / "taken" / "best.pt").read_bytes() == b"the earlier run's best"
    tiny = ["--data", "synthetic", "--data-option", "size=32", "--data-option", "length=4", "--model", "fcn32s", "--upsample", "bilinear",
            "--crop", "32", "32", "--batch-size", "2", "--epochs", "1", "--warmup-steps", "0", "--optimizer", "sgd", "--num-samples", "0",
            "--no-tensorboard", "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    assert main(["train", "--name", "taken", "--overwrite", *tiny]) == 0
    assert torch.load(ws / "runs" / "taken" / "best.pt", weights_only=True)["step"] == 2
    assert (ws / "runs" / "taken" / "notes.txt").read_text() == "mine\n"  # only the run's own files go


def test_a_checkpoint_write_removes_only_its_own_and_dead_writers_temp_files(tmp_path):
    """The old save_checkpoint deleted every last.pt.*.tmp, another live writer's too."""
    import socket

    from fcnseg.checkpoint import save_checkpoint

    host = socket.gethostname().replace(".", "_")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f"last.pt.{host}~{gone.pid}.ab12.tmp",  # a kill -9 cut this write short
            "live": f"last.pt.{host}~{alive.pid}.cd34.tmp",  # another process writing now
            "remote": f"last.pt.otherhost~{gone.pid}.ef56.tmp",  # a writer on another machine (NFS)
            "legacy": "last.pt.x7y8z9.tmp",  # unknown writer
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        save_checkpoint({"step": 1}, tmp_path / "last.pt")
    finally:
        alive.kill()
        alive.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["last.pt", names["live"], names["remote"], names["legacy"]])


def test_equal_stems_from_different_folders_keep_both(ws, tmp_path):
    from fcnseg.inference.predict import _output_names

    # the old names: a, a-2, a-2 (the third input's own stem was taken)
    assert _output_names([Path("x/a.jpg"), Path("y/a.jpg"), Path("z/a-2.png"), Path("y/A.png")]) == ["a", "a-3", "a-2", "A-4"]
    for i, folder in enumerate(("x", "y")):
        write_rgb(tmp_path / folder / "a.png", random_image(np.random.default_rng(10 + i), 23, 31 + 8 * i))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ws / "run" / "best.pt"), str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out)]) == 0
    from PIL import Image

    assert sorted(p.name for p in out.iterdir()) == ["a-2.png", "a-2_overlay.jpg", "a.png", "a_overlay.jpg"]
    assert Image.open(out / "a.png").size == (31, 23) and Image.open(out / "a-2.png").size == (39, 23)


def test_skip_existing_resumes_a_predict_run(ws, tmp_path, capsys):
    images = tmp_path / "in"
    for i in range(3):
        write_rgb(images / f"im{i}.png", random_image(np.random.default_rng(20 + i), 21, 27))
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(ws / "run" / "best.pt"), str(images), "--out", str(out)]
    assert main(argv) == 0
    (out / "im1.png").unlink()  # as a run killed before im1's mask was renamed into place
    kept = (out / "im0.png").stat().st_mtime_ns, (out / "im2_overlay.jpg").stat().st_mtime_ns
    (out / "im0.png").write_bytes((out / "im0.png").read_bytes())  # a marker that it is not rewritten
    kept = (out / "im0.png").stat().st_mtime_ns, kept[1]
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 0
    assert "segmented 1 images" in capsys.readouterr().out
    assert (out / "im1.png").is_file()
    assert ((out / "im0.png").stat().st_mtime_ns, (out / "im2_overlay.jpg").stat().st_mtime_ns) == kept
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "im0.png").stat().st_mtime_ns != kept[0]


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "the disk is full (No space left on device)"), (errno.EROFS, "Read-only file system")], ids=["disk-full", "read-only"])
def test_predict_write_error_is_one_line_and_leaves_no_partial_file(ws, tmp_path, monkeypatch, capsys, code, said):
    from PIL import Image

    real_save = Image.Image.save

    def save_then_fail(self, fp, *a, **kw):
        if kw.get("format") == "JPEG":  # the overlay: after some bytes reached the file
            fp.write(b"\xff\xd8 half an overlay")
            raise OSError(code, os.strerror(code))
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["predict", "--checkpoint", str(ws / "run" / "best.pt"), str(ws / "images" / "a.png"), "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert line.startswith(f"fcnseg predict: error: cannot write overlay {out / 'a_overlay.jpg'}: {said}")
    assert "--skip-existing" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # the mask whole, no half overlay, no temp file


@pytest.mark.parametrize("verb", ["train-config", "eval-plots", "export"])
def test_write_errors_of_other_verbs_are_one_line(ws, tmp_path, monkeypatch, capsys, verb):
    """Read-only folder (EROFS; tests run as root, where chmod does not stop a write) or a
    full disk at the first file each verb writes: exit 2, one line naming the file."""
    import tempfile

    import fcnseg.checkpoint as ckpt_mod

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kw.get("dir", "")))

    if verb == "train-config":
        monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", refuse)
        argv, want = ["train", "--out", str(tmp_path / "r")], f"cannot write run config {tmp_path / 'r' / 'config.yaml'}: Read-only file system"
    elif verb == "eval-plots":
        from matplotlib.figure import Figure

        def full(self, fname, *a, **kw):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

        monkeypatch.setattr(Figure, "savefig", full)
        argv = ["eval", "--checkpoint", str(ws / "run" / "best.pt"), "--plots", str(tmp_path / "plots"), "--precision", "fp32"]
        want = f"cannot write plot {tmp_path / 'plots' / 'confusion.png'}: the disk is full"
    else:
        pytest.importorskip("onnx")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        argv, want = ["export", "--checkpoint", str(ws / "run" / "best.pt"), "--out", str(tmp_path / "m.onnx")], f"cannot write ONNX file {tmp_path / 'm.onnx'}: Read-only file system"
    capsys.readouterr()
    rc = main(argv)
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and want in line, line


@pytest.mark.slow
def test_kill_9_soak_resumes_bit_identically(tmp_path):
    """benchmarks/soak_kill.py with 6 kills (the script's default is 20; each restart costs a
    process start, so the default suite keeps test_train's single kill -9 instead)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak_kill", REPO / "benchmarks" / "soak_kill.py")
    soak_kill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak_kill)
    fig = soak_kill.soak(tmp_path, kills=6, seed=1, epochs=4, echo=lambda *_: None)
    assert fig["ok"], fig
    assert fig["kills"] == 6 and fig["checkpoints_loadable"] == fig["checkpoints_seen_at_kills"]
    assert fig["last_pt_bit_identical"] and fig["best_pt_bit_identical"] and fig["final_metrics_equal"]


# --------------------------------------------------------------------------- portability


@pytest.mark.parametrize(
    "features, native, asked, line",
    [
        (["avx2", "avx512f", "avx512_bf16"], True, "auto", "precision: bf16, channels_last (CPU has avx512_bf16)"),
        (["avx2", "avx512f", "avx512_bf16", "amx_bf16"], True, "auto", "precision: bf16, channels_last (CPU has avx512_bf16 and amx_bf16)"),
        (["avx2"], False, "auto", "precision: fp32, {layout} (no native bf16: avx2 only)"),
        (["avx2", "avx512f"], False, "auto", "precision: fp32, {layout} (no native bf16: avx512f only)"),
        (["avx2", "avx512f", "avx512_bf16"], True, "fp32", "precision: fp32, {layout} (--precision fp32; CPU has avx512_bf16)"),
    ],
)
def test_precision_choice_and_its_reason(monkeypatch, features, native, asked, line):
    import fcnseg.precision as prec

    monkeypatch.setattr(prec, "cpu_features", lambda: features)
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: native)
    chosen = prec.resolve_precision(asked, "cpu")
    # fp32 runs channels_last where it is the production path (no native bf16), NCHW where
    # it is a reference run asked for on a bf16 CPU
    layout = "channels_last" if prec.CPU_FP32_CHANNELS_LAST and not native else "NCHW"
    assert prec.describe(chosen) == line.format(layout=layout)
    assert chosen.name == ("bf16" if native and asked == "auto" else "fp32")


def test_eval_prints_the_precision_once_at_the_start(ws, caplog):
    import logging

    import fcnseg.precision as prec

    prec._told.clear()
    with caplog.at_level(logging.INFO):
        assert main(["eval", "--checkpoint", str(ws / "run" / "best.pt"), "--precision", "fp32", "--json"]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision: ")]
    assert said == [prec.describe(prec.resolve_precision("fp32", "cpu"))] and "--precision fp32" in said[0]


if __name__ == "__main__":  # the catalogue's rows, as fcnseg prints them today
    import contextlib
    import io
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_workspace(Path(tmp))
        os.chdir(root)
        for i, (case, (what, argv, _, _)) in enumerate(CASES.items(), 1):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = main(_outside_run_argv(argv, root, case))
            lines = [x for x in err.getvalue().splitlines() if ": error: " in x] or (out.getvalue() + err.getvalue()).strip().splitlines()[-1:]
            msg = lines[0].replace(str(root) + "/", "")
            command = "fcnseg " + " ".join(argv).replace("{ws}/", "")
            code = f"`` {msg} ``" if "`" in msg else f"`{msg}`"
            print(f"| {i} | {what} | `{command}` | {code} | {rc} | `{case}` |")
