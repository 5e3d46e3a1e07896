"""Kill -9 soak: SIGKILL a CPU training run at random moments, resume it each time, and
check that nothing was ever lost or unreadable.

A tiny run (synthetic data, FCN-32s/ResNet-18, 32x32 crops, a checkpoint after every step,
validation after every epoch) is first trained without interruption. The same run is then
started, killed with SIGKILL at ``--kills`` random moments and restarted with ``--resume``
after each kill; the moments are drawn in turn inside a training step, inside a checkpoint
write (between the first byte of ``torch.save`` and the rename), inside validation, anywhere
in training, and during the start-up (imports, data check, loading the checkpoint). After every kill each ``*.pt`` file on disk is loaded with
``load_checkpoint`` (a partial temporary file may remain; it is never a ``.pt`` and the next
good write removes it). At the end the resumed run's weights (last.pt and best.pt) must equal
the uninterrupted run's bit for bit, and its final metrics too.

It lives in benchmarks/ beside the other product checks run by hand: it exercises the
shipped CLI, as a user's machine would run it, and prints its figures; it is no experiment.

    python benchmarks/soak_kill.py                  # 20 kills, a few minutes on 2 cores
    python benchmarks/soak_kill.py --kills 5 --seed 3 --work /tmp/soak

The child processes mark what they are doing in a small file (test instrumentation only:
fcnseg itself is unchanged), so the kills can aim at each phase: "step" from an optimiser
step (a global optimizer step hook) on, "eval" from ``nn.Module.train(False)`` once training
has started, "write" from ``torch.save`` until its ``os.replace``; "setup" before the first
step (imports, data check, resume).
Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the child: the real CLI, with phase marks written to argv[1]
CHILD = r"""
import os, sys
import torch
from torch import nn

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
now, started, before, seen = ["setup"], [False], ["step"], {}
def mark(phase):  # "phase:n": the n-th time this process entered the phase
    if now[0] != phase:
        now[0] = phase
        seen[phase] = seen.get(phase, 0) + 1
        os.pwrite(fd, f"{phase}:{seen[phase]}".ljust(16).encode(), 0)
def step_hook(optimizer, args, kwargs):  # an optimisation step: training has started
    started[0] = True
    mark("step")
from torch.optim.optimizer import register_optimizer_step_pre_hook
register_optimizer_step_pre_hook(step_hook)
real_train = nn.Module.train
def train(self, mode=True):
    if started[0] and now[0] != "write":
        mark("step" if mode else "eval")
    return real_train(self, mode)
nn.Module.train = train
real_save, real_replace = torch.save, os.replace
def save(*a, **k):
    before[0] = now[0]
    mark("write")
    return real_save(*a, **k)
def replace(*a, **k):
    out = real_replace(*a, **k)
    if now[0] == "write":
        mark(before[0])
    return out
torch.save, os.replace = save, replace
from fcnseg.cli import main
sys.exit(main(sys.argv[2:]))
"""

PHASES = ("step", "write", "eval", "any", "setup")


def run_config(epochs: int) -> dict:
    return {
        "data": "synthetic", "data_options": {"size": 32, "length": 8}, "model": "fcn32s", "backbone": "resnet18",
        "upsample": "bilinear", "crop": [32, 32], "batch_size": 2, "epochs": epochs, "warmup_steps": 2,
        "optimizer": "sgd", "momentum": 0.9, "eval_batch_size": 4, "eval_every": 1, "ckpt_every_steps": 1,
        "num_samples": 0, "tensorboard": False, "device": "cpu", "precision": "fp32", "seed": 0, "log_every": 1,
    }  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _launch(config: Path, out: Path, phase_file: Path, log, resume: bool) -> subprocess.Popen:
    argv = ["train", "--config", str(config), "--out", str(out)] + (["--resume"] if resume else [])
    phase_file.write_bytes(b"setup:1".ljust(16))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(phase_file), *argv], stdout=log, stderr=subprocess.STDOUT, env=_env())


def _phase(phase_file: Path) -> tuple[str, int]:
    name, _, n = phase_file.read_bytes().decode().strip().partition(":")
    return (name or "setup"), int(n or 1)


def _wait(proc: subprocess.Popen, phase_file: Path, target: str, nth: int, timeout: float) -> None:
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        phase, n = _phase(phase_file)
        if phase == target and n >= nth:
            return
        time.sleep(0.0005)


def _kill_at(proc: subprocess.Popen, phase_file: Path, target: str, rng: random.Random, timeout: float) -> str | None:
    """Waits for the moment ``target`` names, then SIGKILLs; returns the phase the process was
    in, or None when it ended on its own first. "step", "write", "eval": the 1st to 3rd entry
    into that phase in this process (drawn), then a random delay inside it; "any": a random
    time within 4 s after the first optimisation step; "setup": within 3 s of the start."""
    if target == "setup":
        delay = rng.uniform(0.0, 3.0)
    elif target == "any":
        _wait(proc, phase_file, "step", 1, timeout)
        delay = rng.uniform(0.0, 4.0)
    else:
        _wait(proc, phase_file, target, rng.randint(1, 3 if target != "eval" else 2), timeout)
        delay = rng.uniform(0, {"step": 0.15, "write": 0.05, "eval": 0.05}[target])
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    if proc.poll() is not None:
        return None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _phase(phase_file)[0]


def _state(path: Path) -> dict:
    from fcnseg.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _same_weights(a: dict, b: dict) -> tuple[bool, int]:
    import torch

    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return same, sum(v.numel() for v in a.values() if v.is_floating_point())


def soak(work: Path, *, kills: int = 20, seed: int = 0, epochs: int = 8, timeout: float = 300.0, echo=print) -> dict:
    """Runs the soak in ``work``; returns its figures (``ok`` True when every check passed)."""
    import yaml

    t_start = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "soak.yaml"
    config.write_text(yaml.safe_dump(run_config(epochs)))
    ref, out, phase_file = work / "reference", work / "soak", work / "phase"
    for d in (ref, out):
        shutil.rmtree(d, ignore_errors=True)
    with open(work / "reference.log", "wb") as log:
        t0 = time.monotonic()
        rc = _launch(config, ref, phase_file, log, resume=False).wait(timeout)
        ref_s = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"the uninterrupted run failed (exit {rc}); see {work / 'reference.log'}")

    rng = random.Random(seed)
    phases: Counter = Counter()
    seen = loadable = tmp_left = launches = 0
    unreadable: list[str] = []
    steps_at_kill: list[int] = []
    ended_early = False
    with open(work / "soak.log", "wb") as log:
        for i in range(kills):
            target = PHASES[i % len(PHASES)]
            proc = _launch(config, out, phase_file, log, resume=(out / "last.pt").is_file())
            launches += 1
            try:
                phase = _kill_at(proc, phase_file, target, rng, timeout)
            finally:  # the soak itself interrupted: no training left behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if phase is None:
                ended_early = True
                break
            phases[phase] += 1
            step = None
            for pt in sorted(out.glob("*.pt")):
                seen += 1
                try:
                    state = _state(pt)
                except Exception as e:  # the soak's finding: a checkpoint a kill broke
                    unreadable.append(f"{pt.name} after kill {i + 1} ({phase}): {e}")
                    continue
                loadable += 1
                if pt.name == "last.pt":
                    step = int(state["step"])
            tmp_left += len(list(out.glob("*.tmp")))
            steps_at_kill.append(-1 if step is None else step)
            echo(f"kill {i + 1:2d}/{kills}: aimed at {target:5s} -> killed in {phase:5s}; last.pt at step {step}")
        proc = _launch(config, out, phase_file, log, resume=(out / "last.pt").is_file())
        launches += 1
        try:
            final_rc = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    a, b = _state(ref / "last.pt"), _state(out / "last.pt")
    same_last, n_params = _same_weights(a["model"], b["model"])
    same_best, _ = _same_weights(_state(ref / "best.pt")["model"], _state(out / "best.pt")["model"])
    ref_final = json.loads((ref / "metrics.json").read_text()).get("final")
    out_final = json.loads((out / "metrics.json").read_text()).get("final") if (out / "metrics.json").is_file() else None
    figures = {
        "kills": sum(phases.values()),
        "kills_by_phase": dict(phases),
        "launches": launches,
        "steps": int(b["step"]),
        "steps_at_kill": steps_at_kill,
        "checkpoints_seen_at_kills": seen,
        "checkpoints_loadable": loadable,
        "unreadable": unreadable,
        "temp_files_seen_at_kills": tmp_left,
        "temp_files_left_at_end": len(list(out.glob("*.tmp"))),
        "final_exit_code": final_rc,
        "last_pt_bit_identical": same_last,
        "best_pt_bit_identical": same_best,
        "final_metrics_equal": ref_final == out_final,
        "parameters_compared": n_params,
        "ended_before_all_kills": ended_early,
        "uninterrupted_run_s": round(ref_s, 1),
        "soak_s": round(time.monotonic() - t_start, 1),
    }
    figures["ok"] = bool(
        figures["kills"] == kills and not unreadable and seen == loadable and final_rc == 0 and same_last
        and same_best and figures["final_metrics_equal"] and figures["temp_files_left_at_end"] == 0
    )  # fmt: skip
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    p.add_argument("--epochs", type=int, default=8, help="of the tiny run (4 steps each)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fcnseg-soak-"))
    try:
        fig = soak(work, kills=args.kills, seed=args.seed, epochs=args.epochs, echo=(lambda *_: None) if args.json else print)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(fig))
        return 0 if fig["ok"] else 1
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    print(f"\nsoak on {cpu}, {os.cpu_count()} cores: {fig['kills']} kills by phase {fig['kills_by_phase']}, {fig['launches']} launches, {fig['steps']} steps")
    print(f"checkpoint files seen at the kills: {fig['checkpoints_seen_at_kills']}, loadable: {fig['checkpoints_loadable']}"
          f"{'; UNREADABLE: ' + '; '.join(fig['unreadable']) if fig['unreadable'] else ''}")
    print(f"temporary files seen at the kills: {fig['temp_files_seen_at_kills']} (never a .pt; left at the end: {fig['temp_files_left_at_end']})")
    print(f"final weights vs the uninterrupted run: last.pt {'bit-identical' if fig['last_pt_bit_identical'] else 'DIFFERENT'}, "
          f"best.pt {'bit-identical' if fig['best_pt_bit_identical'] else 'DIFFERENT'} ({fig['parameters_compared']:,} parameters); "
          f"final metrics {'equal' if fig['final_metrics_equal'] else 'DIFFERENT'}")
    print(f"time: uninterrupted run {fig['uninterrupted_run_s']} s, whole soak {fig['soak_s']} s -> {'OK' if fig['ok'] else 'FAILED'}")
    return 0 if fig["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
