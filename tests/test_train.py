import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dcgan_deploy.checkpoint import load_generator_file, load_torch
from dcgan_deploy.cli import EXIT_DIVERGED, main
from dcgan_deploy.nets import ARCHITECTURES
from dcgan_deploy.train import DivergenceError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = {"g_width": 8, "d_width": 8}


def recipe(tmp_path, name="r", **settings):
    settings = {"arch": "mnist-dcgan", "data": "synthetic:64", "steps": 4, "batch_size": 8, "sample_every": 2,
                "checkpoint_every": 2, "log_every": 1, **settings}
    net = settings.pop("net", TINY)
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["[net]"] + [f"{k} = {json.dumps(v)}" for k, v in net.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "dcgan_deploy", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_few_steps_of_every_architecture(tmp_path, arch):
    cfg = TrainConfig(arch=arch, data="synthetic:32", steps=3, batch_size=8, sample_every=3, checkpoint_every=3,
                      log_every=1, net=TINY)
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    run = tmp_path / "run"
    assert {"train_state.pt", "generator.safetensors", "config.json", "log.jsonl"} <= {p.name for p in run.iterdir()}
    assert (run / "samples" / "step_000003.png").exists()
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "d_loss" in x][:3] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor([x["d_loss"], x["g_loss"]])).all() for x in lines)
    state = load_torch(run / "train_state.pt")
    assert state["step"] == 3 and record["step"] == 3
    tensors, net, meta = load_generator_file(run / "generator.safetensors")
    assert net.arch == arch and meta["train_step"] == "3"
    assert set(tensors) == set(state["G"])


def test_recipe_flags_override_and_bad_recipes(tmp_path):
    cfg = TrainConfig.from_file(recipe(tmp_path), steps=9, data="synthetic:16")
    assert cfg.steps == 9 and cfg.data == "synthetic:16" and cfg.batch_size == 8
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "mnist-dcgan"\nstepz = 3\n')
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_file(bad)
    r = CliRunner().invoke(main, ["train", str(recipe(tmp_path, steps=0))])
    assert r.exit_code == 1 and "steps must be a positive integer" in r.output
    r = CliRunner().invoke(main, ["train", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1 and "recipe not found" in r.output
    r = CliRunner().invoke(main, ["train", str(recipe(tmp_path, data=str(tmp_path / "nowhere")))])
    assert r.exit_code == 1 and "data source not found" in r.output


def test_resume_in_a_new_process_is_bitwise_exact(tmp_path):
    """N steps straight == N/2, then resume in a new process, then N/2 (dropout and BN included)."""
    r = recipe(tmp_path, arch="mnist-dcgan-wide", steps=6, checkpoint_every=3)
    cli("train", r, "--out", tmp_path / "straight")
    cli("train", r, "--steps", 3, "--out", tmp_path / "split")
    assert load_torch(tmp_path / "split" / "train_state.pt")["step"] == 3
    with open(tmp_path / "split" / "log.jsonl", "a") as f:  # as if a resumed run had been killed past step 3
        f.write(json.dumps({"resumed_from": 3}) + "\n" + json.dumps({"step": 4, "d_loss": 9.0, "g_loss": 9.0}) + "\n")
    cli("train", "--resume", tmp_path / "split", "--steps", 6)
    a = load_file(tmp_path / "straight" / "generator.safetensors")
    b = load_file(tmp_path / "split" / "generator.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = load_torch(tmp_path / "straight" / "train_state.pt"), load_torch(tmp_path / "split" / "train_state.pt")
    for k in sa["D"]:
        assert torch.equal(sa["D"][k], sb["D"][k]), k
    # the resumed log reads like the straight one (the killed run's rows dropped), with a marker where it resumed
    steps = [json.loads(x).get("step") for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4, 5, 6, 6]  # per-step rows, then the closing record
    assert (tmp_path / "split" / "log.jsonl").read_text().count("resumed_from") == 1
    # the run folder refuses a second fresh start, and resume refuses recipe changes
    again = cli("train", r, "--out", tmp_path / "split", check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    changed = cli("train", "--resume", tmp_path / "split", "--batch-size", 4, check=False)
    assert changed.returncode == 1 and "only --steps and --device" in changed.stderr


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from dcgan_deploy.checkpoint import save_train_state
    path = sys.argv[1]
    for step in range(1, 10_000):
        save_train_state({"step": step, "w": torch.full((8_000_000,), float(step))}, path)
        print(step, flush=True)
""")


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "train_state.pt"
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"  # one complete save exists
        deadline = time.time() + 30
        # kill while a temp file is being written: mid-save
        while not list(tmp_path.glob(".train_state.pt.*.part")) and time.time() < deadline:
            time.sleep(0.001)
        assert list(tmp_path.glob(".train_state.pt.*.part")), "never caught a save in progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_torch(path)
        assert state["step"] >= 1 and bool((state["w"] == state["step"]).all())


def test_divergence_exits_with_its_own_code(tmp_path):
    res = cli("train", recipe(tmp_path, lr=1e30, steps=20), "--out", tmp_path / "run", check=False)
    assert res.returncode == EXIT_DIVERGED, res.stderr
    assert "diverged at step 1" in res.stderr and "Traceback" not in res.stderr


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(arch="mnist-dcgan", data="synthetic:32", steps=2, batch_size=8, checkpoint_every=1,
                      sample_every=100, net=TINY)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.run()
    good = (tmp_path / "train_state.pt").read_bytes()
    trainer.cfg.steps = 10
    trainer.cfg.lr = 1e30  # blow the weights up
    with pytest.raises(DivergenceError, match="diverged at step 3"):
        trainer.run()
    assert (tmp_path / "train_state.pt").read_bytes() == good
    assert load_torch(tmp_path / "train_state.pt")["step"] == 2


def test_lr_decay_schedule_is_applied_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(arch="mnist-dcgan", steps=10, lr=1e-3, lr_decay_start=4, lr_decay_end=8)
    assert [cfg.lr_at(s) for s in (0, 3, 4, 6, 7, 8, 20)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4, 0, 0])
    for bad in ({"lr_decay_start": 5, "lr_decay_end": 5}, {"lr_decay_end": -1}, {"lr_decay_start": 3}):
        with pytest.raises(ValueError, match="lr_decay"):
            TrainConfig(arch="mnist-dcgan", **bad).check()
    # the optimisers take the scheduled rate (logged per step), and a split run equals a straight one
    settings = {"steps": 8, "lr_decay_start": 2, "lr_decay_end": 6}
    cli("train", recipe(tmp_path, **settings), "--out", tmp_path / "straight")
    cli("train", recipe(tmp_path, **settings), "--out", tmp_path / "split", "--steps", 3)
    cli("train", "--resume", tmp_path / "split", "--steps", 8)
    rows = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r and "done" not in r] == pytest.approx(
        [2e-4, 2e-4, 2e-4, 1.5e-4, 1e-4, 5e-5, 0, 0])
    straight, split = (load_torch(tmp_path / d / "train_state.pt") for d in ("straight", "split"))
    assert split["step"] == 8 and all(torch.equal(straight["G"][k], split["G"][k]) for k in straight["G"])
    assert straight["optG"]["param_groups"][0]["lr"] == 0


def test_ema_generator_is_saved_with_recomputed_batchnorm(tmp_path):
    cfg = TrainConfig(arch="mnist-dcgan", data="synthetic:32", steps=4, batch_size=8, ema=0.5, sample_every=4,
                      checkpoint_every=4, net=TINY)
    Trainer(cfg, tmp_path, progress=False).run()
    state = load_torch(tmp_path / "train_state.pt")
    saved, _, _ = load_generator_file(tmp_path / "generator.safetensors")
    assert state["ema"] and not torch.equal(saved["main.0.weight"], state["G"]["main.0.weight"])
    assert torch.equal(saved["main.0.weight"], state["ema"]["main.0.weight"])
    # BatchNorm statistics were re-estimated for the EMA weights, not copied from G
    key = "main.4.running_mean"
    assert not torch.equal(saved[key], state["G"][key]) and torch.isfinite(saved[key]).all()


def test_two_process_data_parallel_training(tmp_path):
    r = recipe(tmp_path, arch="mnist-dcgan-wide", steps=3, checkpoint_every=3)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dcgan_deploy", "train", str(r), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    done = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"done"' in x]
    assert len(done) == 1  # only rank 0 writes
    ranks = done[0]["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # identical generator weights on both ranks
    assert load_torch(tmp_path / "run" / "train_state.pt")["step"] == 3
    assert res.stderr.count("trained mnist-dcgan-wide") == 1


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path):
    cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=2, batch_size=4, amp="on", channels_last="on",
                      net=TINY, sample_every=2, checkpoint_every=2)
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert trainer.amp and trainer.memory_format == torch.channels_last
    assert trainer.G.main[0].weight.is_contiguous(memory_format=torch.channels_last)
    record = trainer.run()
    assert torch.isfinite(torch.tensor([record["d_loss"], record["g_loss"]])).all()
    from dcgan_deploy.train import cpu_has_amx
    auto = Trainer(TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, net=TINY, device="cpu"),
                   tmp_path / "auto", progress=False)
    assert auto.amp == cpu_has_amx()  # "auto" on CPU: bf16 only where AMX makes it faster
    assert (auto.memory_format == torch.channels_last) == cpu_has_amx()
    off = Trainer(TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, net=TINY, amp="off",
                              channels_last="off"), tmp_path / "off", progress=False)
    assert not off.amp and off.memory_format == torch.contiguous_format
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(arch="dcgan64", amp="yes").check()
