import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dcgan_deploy.checkpoint import CheckpointError, load_generator_file, load_torch
from dcgan_deploy.cli import EXIT_DIVERGED, main
from dcgan_deploy.nets import ARCHITECTURES
from dcgan_deploy.recipe import to_toml
from dcgan_deploy.train import DivergenceError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = {"g_width": 8, "d_width": 8}


def recipe(tmp_path, name="r", **settings):
    settings = {"arch": "mnist-dcgan", "data": "synthetic:64", "steps": 4, "batch_size": 8, "sample_every": 2,
                "checkpoint_every": 2, "log_every": 1, **settings}
    settings.setdefault("net", TINY)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(TrainConfig.of(**settings)))  # a tabled recipe, every key written out
    return path


def cli(*args, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "dcgan_deploy", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_few_steps_of_every_architecture(tmp_path, arch):
    cfg = TrainConfig.of(arch=arch, data="synthetic:32", steps=3, batch_size=8, sample_every=3, checkpoint_every=3,
                      log_every=1, net=TINY)
    record = Trainer(cfg, tmp_path / "run", progress=False).train()
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


def test_a_recipe_is_tables_validated_into_nested_dataclasses(tmp_path):
    tabled = tmp_path / "tabled.toml"
    tabled.write_text('arch = "dcgan64"\nsteps = 30\n[optim]\nlr = 4e-4\nlr_d = 2e-4\n[generator]\nema = 0.999\n'
                      '[discriminator]\naugment = "translation,cutout"\n[run]\nthreads = 1\n[net]\ng_width = 8\n')
    cfg = TrainConfig.from_file(tabled, batch_size=16, average_start=10)  # overrides land in their tables
    assert (cfg.optim.lr, cfg.optim.lr_d, cfg.generator.ema, cfg.run.threads) == (4e-4, 2e-4, 0.999, 1)
    assert (cfg.batch_size, cfg.generator.average_start, cfg.discriminator.augment) == (16, 10, "translation,cutout")
    assert cfg.net == {"g_width": 8} and cfg.optim.beta1 == 0.5  # defaults fill what the file leaves out
    # the older flat form (what earlier checkpoints hold) reads into the same tables
    flat = TrainConfig.from_dict({"arch": "dcgan64", "steps": 30, "batch_size": 16, "lr": 4e-4, "lr_d": 2e-4,
                                  "ema": 0.999, "average_start": 10, "augment": "translation,cutout", "threads": 1,
                                  "lecam": 0.0, "top_k": 0.0, "joint_batch": False, "minibatch_std": 0,
                                  "net": {"g_width": 8}})
    assert flat == cfg
    # --dry-run's TOML reads back as the same recipe
    (tmp_path / "resolved.toml").write_text(to_toml(cfg))
    assert TrainConfig.from_file(tmp_path / "resolved.toml") == cfg
    for bad, words in (({"optim": {"lrr": 1}}, "unknown setting(s) in [optim]: lrr"),
                       ({"optim": 3}, "optim must be a table"),
                       ({"run": {"threads": "two"}}, "[run] threads must be a whole number, got 'two'"),
                       ({"lecam": 0.3}, "lecam is no longer in the trainer"),
                       ({"minibatch_std": False}, "minibatch_std is no longer in the trainer"),
                       ({"discriminator": {"augment": "scale"}}, "unknown policy 'scale'")):
        with pytest.raises(ValueError, match=re.escape(words)):
            TrainConfig.from_dict({"arch": "dcgan64", **bad})
    with pytest.raises(ValueError, match="unknown setting"):  # an override by a name no table has
        TrainConfig.from_dict({"arch": "dcgan64"}, bogus=1)


def test_dry_run_prints_the_resolved_recipe_and_builds_nothing(tmp_path):
    r = CliRunner().invoke(main, ["train", str(ROOT / "training" / "mnist-dcgan.toml"), "--steps", "5",
                                  "--out", str(tmp_path / "run"), "--dry-run"])
    assert r.exit_code == 0, r.output
    shown = TrainConfig.from_dict(tomllib.loads(r.output))
    assert shown == TrainConfig.from_file(ROOT / "training" / "mnist-dcgan.toml", steps=5)
    assert "[optim]" in r.output and "lr_decay_end = 32000" in r.output and not (tmp_path / "run").exists()
    cli("train", recipe(tmp_path, steps=2), "--out", tmp_path / "done")  # and of a run to resume
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "done"), "--steps", "6", "--dry-run"])
    assert r.exit_code == 0 and TrainConfig.from_dict(tomllib.loads(r.output)).steps == 6
    assert load_torch(tmp_path / "done" / "train_state.pt")["step"] == 2  # nothing trained


def test_recipe_flags_override_and_bad_recipes(tmp_path):
    cfg = TrainConfig.from_file(recipe(tmp_path), steps=9, data="synthetic:16")
    assert cfg.steps == 9 and cfg.data == "synthetic:16" and cfg.batch_size == 8
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "mnist-dcgan"\nstepz = 3\n')
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_file(bad)
    bad.write_text('arch = "mnist-dcgan"\nsteps = 0\n')
    r = CliRunner().invoke(main, ["train", str(bad)])
    assert r.exit_code == 1 and "steps must be a positive integer" in r.output
    r = CliRunner().invoke(main, ["train", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1 and "recipe not found" in r.output
    r = CliRunner().invoke(main, ["train", str(recipe(tmp_path, data=str(tmp_path / "nowhere")))])
    assert r.exit_code == 1 and "data source not found" in r.output


@pytest.mark.slow
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
    assert changed.returncode == 1 and "only --steps, --device and --average-start" in changed.stderr


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from dcgan_deploy.checkpoint import save_train_state
    path = sys.argv[1]
    for step in range(1, 10_000):
        save_train_state({"step": step, "w": torch.full((8_000_000,), float(step))}, path)
        print(step, flush=True)
""")


@pytest.mark.slow
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


@pytest.mark.slow
def test_divergence_exits_with_its_own_code(tmp_path):
    res = cli("train", recipe(tmp_path, lr=1e30, steps=20), "--out", tmp_path / "run", check=False)
    assert res.returncode == EXIT_DIVERGED, res.stderr
    assert "diverged at step 1" in res.stderr and "Traceback" not in res.stderr
    assert "no checkpoint had been written" in res.stderr and "was kept" not in res.stderr


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig.of(arch="mnist-dcgan", data="synthetic:32", steps=2, batch_size=8, checkpoint_every=1,
                      sample_every=100, net=TINY)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    good = (tmp_path / "train_state.pt").read_bytes()
    trainer.cfg.steps = 10
    trainer.cfg.optim.lr = 1e30  # blow the weights up
    with pytest.raises(DivergenceError, match=r"diverged at step 3 .*the last good checkpoint \(step 2\)"):
        trainer.train()
    assert (tmp_path / "train_state.pt").read_bytes() == good
    assert load_torch(tmp_path / "train_state.pt")["step"] == 2


def test_a_failed_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    cfg = TrainConfig.of(arch="mnist-dcgan", data="synthetic:32", steps=2, batch_size=8, checkpoint_every=2,
                      sample_every=100, net=TINY)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)

    def full_disk():
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(trainer, "save", full_disk)
    with pytest.raises(OSError, match="could not write the checkpoint of step 2 \\(No space left on device\\); no "
                                      "checkpoint had been written"):
        trainer.train()


@pytest.mark.slow
def test_one_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    import fcntl
    run = tmp_path / "run"
    cli("train", recipe(tmp_path, steps=2), "--out", run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with open(run / ".lock", "a+") as held:  # another process training this folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = cli("train", "--resume", run, "--steps", 4, check=False)
        assert res.returncode == 1 and "is being trained by another process; nothing was changed" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    cli("train", "--resume", run, "--steps", 4)  # once it is free, the resume runs
    assert load_torch(run / "train_state.pt")["step"] == 4


def test_lr_decay_schedule_is_applied_and_resumes_exactly(tmp_path):
    cfg = TrainConfig.of(arch="mnist-dcgan", steps=10, lr=1e-3, lr_decay_start=4, lr_decay_end=8)
    assert [cfg.lr_at(s) for s in (0, 3, 4, 6, 7, 8, 20)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4, 0, 0])
    assert TrainConfig.of(arch="mnist-dcgan", lr=1e-3, lr_d=4e-3, lr_decay_start=4, lr_decay_end=8).lr_d_at(6) \
        == pytest.approx(2e-3)  # D's rate follows the same schedule
    for bad in ({"lr_decay_start": 5, "lr_decay_end": 5}, {"lr_decay_end": -1}, {"lr_decay_start": 3}):
        with pytest.raises(ValueError, match="lr_decay"):
            TrainConfig.of(arch="mnist-dcgan", **bad).check()
    # the optimisers take the scheduled rate (logged per step), and a split run equals a straight one
    settings = dict(arch="mnist-dcgan", data="synthetic:64", batch_size=8, sample_every=100, checkpoint_every=100,
                    log_every=1, net=TINY, lr_decay_start=2, lr_decay_end=6)
    Trainer(TrainConfig.of(**settings, steps=8), tmp_path / "straight", progress=False).train()
    Trainer(TrainConfig.of(**settings, steps=3), tmp_path / "split", progress=False).train()
    Trainer.resume(tmp_path / "split", progress=False, steps=8).train()
    rows = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r and "done" not in r] == pytest.approx(
        [2e-4, 2e-4, 2e-4, 1.5e-4, 1e-4, 5e-5, 0, 0])
    straight, split = (load_torch(tmp_path / d / "train_state.pt") for d in ("straight", "split"))
    assert split["step"] == 8 and all(torch.equal(straight["G"][k], split["G"][k]) for k in straight["G"])
    assert straight["optG"]["param_groups"][0]["lr"] == 0


@pytest.mark.slow
def test_identical_runs_are_bitwise_identical_under_load(tmp_path):
    """Three fresh runs of one recipe at once (the two cores oversubscribed), and one resumed half-way: the
    same weights, bit for bit. The 64x64 net with DiffAugment (every transform, and its generator state in the
    checkpoint), spectral norm and R1 covers the convolution kernels whose backward passes reduce across threads."""
    r = recipe(tmp_path, arch="dcgan64", steps=4, checkpoint_every=2, batch_size=8, loss="hinge",
               augment="color,flip,translation,cutout", spectral_norm=True, r1=1.0, r1_every=2,
               net={"g_width": 8, "d_width": 8, "channels": 3})
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "dcgan_deploy", "train", str(r), "--out", str(tmp_path / f"run{i}")]
                              + (["--steps", "2"] if i == 3 else []), stderr=subprocess.PIPE, env=env)
             for i in range(4)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    cli("train", "--resume", tmp_path / "run3", "--steps", 4, env={"OMP_NUM_THREADS": ""})
    states = [load_torch(tmp_path / f"run{i}" / "train_state.pt") for i in range(4)]
    assert states[0]["train_config"]["run"]["threads"] >= 1 and states[0]["train_config"]["run"]["deterministic"]
    assert len({s["train_config"]["run"]["threads"] for s in states}) == 1  # fixed at the start, kept on resume
    for s in states[1:]:
        assert s["step"] == 4
        for net in ("G", "D"):
            for k in states[0][net]:
                assert torch.equal(states[0][net][k], s[net][k]), (net, k)


def test_ema_generator_is_saved_with_recomputed_batchnorm(tmp_path):
    cfg = TrainConfig.of(arch="mnist-dcgan", data="synthetic:32", steps=4, batch_size=8, ema=0.5, sample_every=4,
                      checkpoint_every=4, net=TINY)
    Trainer(cfg, tmp_path, progress=False).train()
    state = load_torch(tmp_path / "train_state.pt")
    saved, _, _ = load_generator_file(tmp_path / "generator.safetensors")
    assert state["ema"] and not torch.equal(saved["main.0.weight"], state["G"]["main.0.weight"])
    assert torch.equal(saved["main.0.weight"], state["ema"]["main.0.weight"])
    # BatchNorm statistics were re-estimated for the EMA weights, not copied from G
    key = "main.4.running_mean"
    assert not torch.equal(saved[key], state["G"][key]) and torch.isfinite(saved[key]).all()


@pytest.mark.slow
def test_weight_averaging_is_the_mean_of_the_sampled_generators_and_resumes_exactly(tmp_path):
    """average_start / average_every: the deployed generator is the plain mean of the EMA weights at the sampled
    steps (BatchNorm re-estimated), training itself is unchanged, and a resume, or averaging switched on when
    resuming, gives the same result as a straight run."""
    settings = dict(arch="mnist-dcgan", data="synthetic:32", steps=7, batch_size=8, ema=0.5, sample_every=100,
                    checkpoint_every=100, log_every=100, average_every=2, net=TINY)  # averaging off: average_start 0
    plain = Trainer(TrainConfig.of(**settings), tmp_path / "plain", progress=False)
    sampled = []
    while plain.step < 7:  # the train loop by hand, keeping the EMA weights at steps 3, 5 and 7
        plain.train_step()
        plain.step += 1
        if plain.step in (3, 5, 7):
            sampled.append([p.detach().clone() for p in plain.ema.parameters()])
    mean = [torch.stack(ws).double().mean(0).float() for ws in zip(*sampled)]

    averaged = Trainer(TrainConfig.of(**settings, average_start=3), tmp_path / "avg", progress=False)
    averaged.train()
    assert averaged.average["count"] == 3
    for a, b in zip(plain.G.parameters(), averaged.G.parameters()):
        assert torch.equal(a, b)  # averaging reads the weights, it does not change training
    saved, _, meta = load_generator_file(tmp_path / "avg" / "generator.safetensors")
    names = [n for n, _ in averaged.ema.named_parameters()]
    for name, m in zip(names, mean):
        assert torch.allclose(saved[name], m, atol=1e-6), name
    assert not torch.allclose(saved[names[0]], dict(averaged.ema.named_parameters())[names[0]])
    assert meta["average"] == "3 generators, every 2 steps from step 3"
    key = "main.4.running_mean"  # BatchNorm statistics re-estimated for the mean weights
    assert not torch.equal(saved[key], averaged.ema.state_dict()[key]) and torch.isfinite(saved[key]).all()

    def split(out, stop, **resume):
        first = dict(settings, steps=stop, checkpoint_every=stop)
        if not resume:
            first.update(average_start=3)
        Trainer(TrainConfig.of(**first), out, progress=False).train()
        Trainer.resume(out, progress=False, steps=7, **resume).train()
        return load_generator_file(out / "generator.safetensors")[0]

    # export reads either file of the run as the same generator, and says what was averaged
    from dcgan_deploy.checkpoint import open_checkpoint
    from dcgan_deploy.export import base_metadata
    for source in ("train_state.pt", "generator.safetensors"):
        c = open_checkpoint(tmp_path / "avg" / source)
        assert base_metadata(c, 18)["average"] == "3 generators, every 2 steps from step 3", source
        got = c.model.state_dict()
        for k in saved:  # the weights exactly; BatchNorm's re-estimated statistics to float rounding (the
            if "running" in k:  # trainer's copy may be channels_last)
                assert torch.allclose(got[k], saved[k], atol=1e-5), (source, k)
            elif "num_batches" not in k:
                assert torch.equal(got[k], saved[k]), (source, k)
    for other in (split(tmp_path / "split", 4), split(tmp_path / "late", 2, average_start=3)):
        for k in saved:
            assert torch.equal(saved[k], other[k]), k
    Trainer(TrainConfig.of(**dict(settings, steps=2, checkpoint_every=2)), tmp_path / "early", progress=False).train()
    with pytest.raises(ValueError, match=r"average_start must be after the checkpoint's step \(2\), got 2"):
        Trainer.resume(tmp_path / "early", progress=False, steps=9, average_start=2)
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "early"), "--steps", "3", "--average-start", "3"])
    assert r.exit_code == 0, r.output
    assert load_generator_file(tmp_path / "early" / "generator.safetensors")[2]["average"] == (
        "1 generator, every 2 steps from step 3")
    with pytest.raises(ValueError, match="average_start cannot change now"):
        Trainer.resume(tmp_path / "split", progress=False, steps=9, average_start=8)
    state = load_torch(tmp_path / "split" / "train_state.pt")
    state["average"]["sum"] = state["average"]["sum"][1:]
    torch.save(state, tmp_path / "split" / "train_state.pt")
    with pytest.raises(CheckpointError, match="weight average does not match the generator"):
        Trainer.resume(tmp_path / "split", progress=False, steps=9)
    with pytest.raises(CheckpointError, match="its weight average does not match the generator"):
        open_checkpoint(tmp_path / "split" / "train_state.pt")
    for bad, words in (({"average_every": 0}, "average_every must be a positive integer"),
                       ({"average_start": -1}, "average_start must be a non-negative integer")):
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({"arch": "mnist-dcgan", **bad})


def torchrun(*args, out, steps=None, resume=False, timeout=300):
    """``torchrun --standalone --nproc_per_node 2`` of the trainer; its stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dcgan_deploy",
           "train", *(["--resume", str(out)] if resume else [*map(str, args), "--out", str(out)])]
    res = subprocess.run(cmd + (["--steps", str(steps)] if steps else []), capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def same_weights(a, b):
    sa, sb = load_torch(a / "train_state.pt"), load_torch(b / "train_state.pt")
    return sa["step"] == sb["step"] and all(torch.equal(sa[n][k], sb[n][k]) for n in ("G", "D") for k in sa[n])


@pytest.mark.slow
def test_two_process_data_parallel_training(tmp_path):
    """DistributedDataParallel on two processes (gloo): both ranks end with the same weights, only rank 0
    writes, and a run resumed half-way under torchrun equals the straight one (D with BatchNorm and dropout)."""
    r = recipe(tmp_path, arch="mnist-dcgan-wide", steps=4, checkpoint_every=2)
    err = torchrun(r, out=tmp_path / "run")
    done = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"done"' in x]
    assert len(done) == 1  # only rank 0 writes
    ranks = done[0]["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # identical generator weights on both ranks
    assert load_torch(tmp_path / "run" / "train_state.pt")["step"] == 4
    assert err.count("trained mnist-dcgan-wide") == 1
    torchrun(r, out=tmp_path / "split", steps=2)
    torchrun(out=tmp_path / "split", resume=True, steps=4)
    assert same_weights(tmp_path / "run", tmp_path / "split")


@pytest.mark.slow
def test_a_two_node_launch_on_one_machine_trains_like_one_node(tmp_path):
    """``torchrun --nnodes 2`` with the c10d rendezvous on 127.0.0.1: two "nodes" of one process each give the
    weights two processes on one node give (spectral-norm D, DiffAugment at an adaptive strength whose signal
    is averaged over the ranks, hinge loss, R1 under DDP; class-conditional, each rank with its slice's labels,
    an auxiliary classifier in D)."""
    from conftest import free_port
    r = recipe(tmp_path, arch="dcgan64", data="synthetic:64:3", conditional="on", steps=2, checkpoint_every=2,
               batch_size=4, loss="hinge", spectral_norm=True, classifier=0.5,
               augment="color,translation,cutout", ada_target=0.1, ada_images=8, r1=1.0, r1_every=1,
               net={"g_width": 8, "d_width": 8, "channels": 3})
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_id", "two-nodes",
                               "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "dcgan_deploy", "train", str(r), "--out",
                               str(tmp_path / "nodes")], stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    errs = [n.communicate(timeout=300)[1] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    done = [json.loads(x) for x in (tmp_path / "nodes" / "log.jsonl").read_text().splitlines() if '"done"' in x]
    assert len(done) == 1 and len(set(done[0]["ranks"])) == 1 and len(done[0]["ranks"]) == 2
    torchrun(r, out=tmp_path / "one_node")
    assert same_weights(tmp_path / "nodes", tmp_path / "one_node")
    p = [load_torch(tmp_path / run / "train_state.pt")["augment_p"] for run in ("nodes", "one_node")]
    assert p[0] == p[1] and 0 <= p[0] <= 1


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path):
    cfg = TrainConfig.of(arch="dcgan64", data="synthetic:16", steps=2, batch_size=4, amp="on", channels_last="on",
                      net=TINY, sample_every=2, checkpoint_every=2)
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert trainer.amp and trainer.memory_format == torch.channels_last
    assert trainer.G.main[0].weight.is_contiguous(memory_format=torch.channels_last)
    record = trainer.train()
    assert torch.isfinite(torch.tensor([record["d_loss"], record["g_loss"]])).all()
    from dcgan_deploy.train import cpu_has_amx
    auto = Trainer(TrainConfig.of(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, net=TINY, device="cpu"),
                   tmp_path / "auto", progress=False)
    assert auto.amp == cpu_has_amx()  # "auto" on CPU: bf16 only where AMX makes it faster
    assert (auto.memory_format == torch.channels_last) == cpu_has_amx()
    off = Trainer(TrainConfig.of(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, net=TINY, amp="off",
                              channels_last="off"), tmp_path / "off", progress=False)
    assert not off.amp and off.memory_format == torch.contiguous_format
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig.of(arch="dcgan64", amp="yes").check()


def test_the_recipe_reference_in_training_readme_is_a_valid_recipe():
    text = (ROOT / "training" / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    cfg = TrainConfig.from_dict(tomllib.loads(block))
    assert cfg == TrainConfig.from_file(ROOT / "training" / "dcgan64-folder.toml", data="images/")


@pytest.mark.slow
def test_a_conditional_run_takes_the_datas_labels_and_resumes_exactly(tmp_path):
    """conditional = "on": G takes a label beside z, D projects it (and here also has an auxiliary classifier);
    the classes are the data's, carried by the checkpoint and the deployable generator; a run resumed half-way
    equals the straight one, bit for bit."""
    from dcgan_deploy.checkpoint import open_checkpoint
    settings = dict(arch="mnist-dcgan", data="synthetic:64:3", conditional="on", steps=4, checkpoint_every=2,
                    batch_size=8, ema=0.5, classifier=1.0, net=TINY)
    Trainer(TrainConfig.of(**settings), tmp_path / "straight", progress=False).train()
    Trainer(TrainConfig.of(**{**settings, "steps": 2}), tmp_path / "split", progress=False).train()
    Trainer.resume(tmp_path / "split", progress=False, steps=4).train()
    assert same_weights(tmp_path / "straight", tmp_path / "split")
    state = load_torch(tmp_path / "straight" / "train_state.pt")
    assert state["classes"] == ["a", "b", "c"] and state["net_config"]["num_classes"] == 3
    assert state["D"]["classify.weight"].shape[0] == 3  # the auxiliary classifier's head resumes with D
    tensors, net, meta = load_generator_file(tmp_path / "straight" / "generator.safetensors")
    assert net.num_classes == 3 and json.loads(meta["classes"]) == ["a", "b", "c"] and "embed.weight" in tensors
    g = open_checkpoint(tmp_path / "straight" / "generator.safetensors").model
    z = torch.randn(3, net.latent_dim)
    by_label = [g(z, torch.full((3,), k)) for k in range(3)]
    assert not torch.allclose(by_label[0], by_label[1])  # the label changes the image
    with pytest.raises(ValueError, match="give labels"):
        g(z)


def test_conditional_training_needs_labelled_data(tmp_path):
    r = recipe(tmp_path, data="synthetic:64", conditional="on")
    res = cli("train", r, "--out", tmp_path / "run", check=False)
    assert res.returncode == 1 and "needs labelled data" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_state.pt").exists()
    # "auto": conditional where the data is labelled, not where it is not
    assert Trainer(TrainConfig.of(arch="mnist-dcgan", data="synthetic:16", conditional="auto", batch_size=8, net=TINY),
                   tmp_path / "a", progress=False).classes == ()
    assert Trainer(TrainConfig.of(arch="mnist-dcgan", data="synthetic:16:2", conditional="auto", batch_size=8,
                                  net=TINY), tmp_path / "b", progress=False).classes == ("a", "b")


@pytest.mark.slow
def test_an_auxiliary_classifier_learns_the_classes_and_steers_the_generator(tmp_path):
    """``classifier = w``: D's head learns the real images' classes (its cross-entropy, logged as ``d_class``,
    falls from chance), and G's loss adds w times the head's cross-entropy on its own images (so G trains
    apart from a run without it)."""
    settings = dict(arch="mnist-dcgan", data="synthetic:64:3", conditional="on", steps=100, batch_size=16,
                    checkpoint_every=100, sample_every=100, lr=1e-3, net=TINY)
    Trainer(TrainConfig.of(**settings, classifier=1.0), tmp_path / "aux", progress=False).train()
    log = [json.loads(x) for x in (tmp_path / "aux" / "log.jsonl").read_text().splitlines()]
    first, last = log[0]["d_class"], log[-1]["d_class"]
    assert abs(first - math.log(3)) < 0.3 and last < first / 2, (first, last)
    short = {**settings, "steps": 2, "checkpoint_every": 2}
    Trainer(TrainConfig.of(**short), tmp_path / "plain", progress=False).train()
    Trainer(TrainConfig.of(**short, classifier=1.0), tmp_path / "two", progress=False).train()
    assert "d_class" not in (tmp_path / "plain" / "log.jsonl").read_text()
    g = [load_torch(tmp_path / run / "train_state.pt")["G"] for run in ("plain", "two")]
    assert not all(torch.equal(g[0][k], g[1][k]) for k in g[0])  # the same start, G steered apart


def test_an_auxiliary_classifier_needs_a_conditional_run_on_labelled_data(tmp_path):
    with pytest.raises(ValueError, match="classifier .* needs a conditional run"):
        TrainConfig.of(arch="mnist-dcgan", classifier=1.0).check()
    with pytest.raises(ValueError, match="classifier must be a non-negative"):
        TrainConfig.of(arch="mnist-dcgan", conditional="on", classifier=-1.0).check()
    r = recipe(tmp_path, data="synthetic:64", conditional="auto", classifier=1.0)
    res = cli("train", r, "--out", tmp_path / "run", check=False)
    assert res.returncode == 1 and "classifier" in res.stderr and "needs labelled data" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "train_state.pt").exists()
