"""P4's fast step (p4_gan/fast_step.py) and the recipe options beside it (TTUR, linear LR decay,
LeCam). A CUDA graph cannot run here; what it needs can be checked: on the CPU the fast step is
the plain step, bit for bit, and two of its steps issue the same operations with the same
constants and no host sync, which is what makes a recorded step replayable. What only a GPU
shows (a CPU tensor or a host copy inside the capture, a replay that draws no new numbers) is
bench.p4_gan speed's replay check, which the GPU call runs before it trains."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import require_shared
from hw2_utils import CLIError, derived_seed
from p4_gan import train
from p4_gan.diffaugment import parse_policy
from p4_gan.fast_step import FastSteps
from p4_gan.gan import GANTrainer, Recipe, lecam_penalty
from p4_gan.models import GANConfig
from p4_gan.pipeline import load_generator

CONFIG = GANConfig(g_channels=4, d_channels=4, d_norm="spectral")
# every option the fast step must carry: DiffAugment's three ops, EMA, TTUR, LeCam
RECIPE = Recipe(
    loss="hinge",
    diffaug=parse_policy("color,translation,cutout"),
    ema_decay=0.999,
    lr=2e-4,
    d_lr=4e-4,
    lecam_weight=0.3,
)
BATCH, D_STEPS = 8, 2


def _faces(n: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )


def _train(trainer: GANTrainer, steps: int, fast: bool, first: int = 0) -> list[dict]:
    """`steps` steps from step `first`, each on the next 8 of a fixed shuffle, with the
    learning rates decaying linearly over the last half of 16 steps."""
    faces = _faces()
    order = torch.randperm(len(faces), generator=torch.Generator().manual_seed(2))
    runner = FastSteps(trainer, faces, BATCH, D_STEPS) if fast else None
    stats = []
    for step in range(first, first + steps):
        indices = order[(step * BATCH) % len(faces) :][:BATCH]
        trainer.set_lr_scale(train.lr_scale(step, 16, 0.5))
        if fast:
            out = runner(indices, step + 1)
        else:
            out = train.train_step(trainer, faces, indices, step + 1, D_STEPS)
        stats.append({k: v.clone() for k, v in out.items()})
    return stats


def _weights(trainer: GANTrainer) -> dict[str, torch.Tensor]:
    nets = {"G": trainer.G, "D": trainer.D, "ema": trainer.ema}
    weights = {f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()}
    return {**weights, "lecam_avg": trainer.lecam_avg, "g_count": trainer.g_count}


def test_fast_step_is_the_plain_step_on_the_cpu():
    plain, fast = (GANTrainer(CONFIG, RECIPE, seed=3, fast=f) for f in (False, True))
    plain_stats, fast_stats = _train(plain, 8, fast=False), _train(fast, 8, fast=True)
    assert plain_stats[-1].keys() == {"d_loss", "d_real", "d_fake", "lecam", "g_loss"}
    for a, b in zip(plain_stats, fast_stats):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pw, fw = _weights(plain), _weights(fast)
    assert all(torch.equal(pw[k], fw[k]) for k in pw), [
        k for k in pw if not torch.equal(pw[k], fw[k])
    ]
    assert plain.g_steps == fast.g_steps == 4 and fast.g_count.item() == 4


def test_fast_step_resumes_to_the_uninterrupted_run():
    straight = GANTrainer(CONFIG, RECIPE, seed=3, fast=True)
    _train(straight, 8, fast=True)
    first = GANTrainer(CONFIG, RECIPE, seed=3, fast=True)
    _train(first, 5, fast=True)
    resumed = GANTrainer(CONFIG, RECIPE, seed=3, fast=True)
    resumed.load_state_dict(first.state_dict())
    _train(resumed, 3, fast=True, first=5)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the learning rates are the optimisers' own tensors, set by the schedule, not the saved values
    assert resumed.opt_d.param_groups[0]["lr"].item() == pytest.approx(
        4e-4 * train.lr_scale(7, 16, 0.5)
    )


class OpLog(TorchDispatchMode):
    """Every ATen operation with its constants and its tensors' shapes and dtypes, but those of
    Adam's step (PyTorch's capturable Adam is the GPU's; the CPU's reads its step count on the host)."""

    SYNCS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default"}

    def __init__(self):
        super().__init__()
        self.ops, self.paused = [], False

    def _describe(self, value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, self._describe(v)) for k, v in sorted(value.items()))
        if isinstance(value, (bool, int, float, str, type(None), torch.device, torch.dtype)):
            return value
        return type(value).__name__  # a generator, a memory format, ...

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused and not str(func).startswith("profiler."):  # Adam's record_function
            self.ops.append((str(func), self._describe(args), self._describe(kwargs)))
        return func(*args, **kwargs)


def test_two_fast_steps_issue_the_same_operations_without_a_host_sync():
    trainer = GANTrainer(CONFIG, RECIPE, seed=3, fast=True)
    faces = _faces()
    runner = FastSteps(trainer, faces, BATCH, D_STEPS)
    logs = []
    for step in range(1, 9):
        log = OpLog()
        for opt in (trainer.opt_g, trainer.opt_d):
            opt.register_step_pre_hook(lambda *_, log=log: setattr(log, "paused", True))
            opt.register_step_post_hook(lambda *_, log=log: setattr(log, "paused", False))
        indices = torch.arange(BATCH) + step  # made outside: the caller's, not the step's
        with log:
            runner(indices, step)
        logs.append(log.ops)
    # steps 5 and 7: a D update each; steps 4, 6 and 8: a D and a G update each, past EMA's
    # short start (a Python constant recorded there would freeze it, as a graph would)
    assert len(logs[4]) > 200 and logs[4] == logs[6]
    assert len(logs[3]) > len(logs[4]) and logs[3] == logs[5] == logs[7]
    syncs = {op for ops in logs for op, *_ in ops if op in OpLog.SYNCS}
    assert not syncs


def test_a_python_number_that_changes_between_steps_would_be_caught():
    """The control: EMA with a decay passed as a Python number (as hw2_utils.ema_update takes
    it) differs between steps in the recorded constants."""
    from hw2_utils import ema_update

    trainer = GANTrainer(CONFIG, RECIPE, seed=3)
    logs = []
    for step in (1, 2):
        with OpLog() as log:
            ema_update(trainer.ema, trainer.G, min(0.999, (1 + step) / (10 + step)))
        logs.append(log.ops)
    assert logs[0] != logs[1]


def test_lecam_penalty_matches_its_definition():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    # relu(real - fake_avg)^2: 2.4^2, 0 -> mean 2.88; relu(real_avg - fake)^2: 0, 3.2^2 -> 5.12
    penalty = lecam_penalty(real, fake, torch.tensor(0.2), torch.tensor(-0.4))
    assert penalty.item() == pytest.approx(8.0)


def test_lecam_averages_follow_d_outputs_and_change_ds_update():
    with_lecam, without = (
        GANTrainer(CONFIG, Recipe(loss="hinge", lecam_weight=w), seed=3) for w in (1.0, 0.0)
    )
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    stats = with_lecam.d_step(real)
    without.d_step(real)
    expected = 0.01 * torch.stack([stats["d_real"], stats["d_fake"]])
    assert torch.allclose(with_lecam.lecam_avg, expected)
    assert not torch.equal(
        next(with_lecam.D.parameters()), next(without.D.parameters())
    )  # the same draws, another loss
    assert "lecam" not in without.d_step(real) and "lecam_avg" not in without.state_dict()


def test_lr_schedule_and_ttur():
    assert [train.lr_scale(s, 10, 0.6) for s in (0, 5, 6, 8, 9)] == pytest.approx(
        [1, 1, 1, 0.5, 0.25]
    )
    assert train.lr_scale(3, 10, 1.0) == 1
    trainer = GANTrainer(CONFIG, Recipe(lr=1e-4, d_lr=4e-4), seed=0)
    trainer.set_lr_scale(0.5)
    assert trainer.opt_g.param_groups[0]["lr"].item() == pytest.approx(5e-5)
    assert trainer.opt_d.param_groups[0]["lr"].item() == pytest.approx(2e-4)


def _run(out, *extra):
    train.main(
        [
            "--preset", "improved", "--data", str(require_shared("hw2_data", "face")),
            "--out", str(out), "--g-channels", "4", "--d-channels", "4", "--batch-size", "8",
            "--fid-every", "0", "--log-every", "1", "--device", "cpu", "--epochs", "2",
            "--d-steps", "2", "--lecam-weight", "0.5", "--d-lr", "3e-4", "--lr-decay-start", "0.5",
            *extra,
        ]
    )  # fmt: skip


def test_train_py_fast_step_writes_the_plain_run_on_the_cpu(tmp_path):
    _run(tmp_path / "plain")
    _run(tmp_path / "fast", "--fast-step")
    plain, _ = load_generator(tmp_path / "plain" / "model.pt")
    fast, _ = load_generator(tmp_path / "fast" / "model.pt")
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name
    rows = list(csv.DictReader((tmp_path / "fast" / "log.csv").open()))
    assert len(rows) == 6 and all(float(r["lecam"]) >= 0 for r in rows)


def test_fast_step_refuses_fp16(tmp_path):
    with pytest.raises(CLIError, match="fp32 or bf16"):
        _run(tmp_path / "run", "--fast-step", "--precision", "fp16")


def test_speed_bench_measures_both_steps(capsys):
    from bench import p4_gan as bench

    result = bench.main(
        ["speed", "--device", "cpu", "--preset", "dcgan", "--batch-sizes", "2"]
        + ["--warmup", "1", "--seconds", "0.1"]
    )
    assert result["batch2_plain"]["steps"] >= 1 and result["batch2_fast"]["steps"] >= 1
    assert result["batch2_speedup"] > 0 and "batch2_fast:" in capsys.readouterr().out


def test_a_state_from_another_devices_generator_is_reseeded_and_goes_on(capsys):
    """A GPU --fast-step run's random state (16 bytes of a CUDA generator) resumed where the
    generator is a CPU one: a new stream from (seed, g_steps), said in a note, not an error."""
    first = GANTrainer(CONFIG, RECIPE, seed=3)
    _train(first, 4, fast=False)
    state = first.state_dict()
    state["noise"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator's get_state holds
    resumed = GANTrainer(CONFIG, RECIPE, seed=3)
    resumed.load_state_dict(state)
    assert "reseeded at G step 2" in capsys.readouterr().out
    expected = torch.Generator().manual_seed(derived_seed(3, "noise", 0, 2))
    assert torch.equal(resumed.noise.get_state(), expected.get_state())
    _train(resumed, 2, fast=False, first=4)


def test_a_resumed_adam_steps_as_this_run_builds_it():
    """Adam's saved settings (capturable, as a GPU fast run saves them) do not come back with
    its state: the CPU Adam here steps, its step counts on the CPU."""
    first = GANTrainer(CONFIG, RECIPE, seed=3)
    _train(first, 4, fast=False)
    state = first.state_dict()
    for name in ("opt_g", "opt_d"):
        state[name]["param_groups"][0]["capturable"] = True
        for saved in state[name]["state"].values():  # not as this Adam counts: moved back
            saved["step"] = saved["step"].double()
    resumed = GANTrainer(CONFIG, RECIPE, seed=3)
    resumed.load_state_dict(state)
    assert not resumed.opt_d.param_groups[0]["capturable"]
    steps = [s["step"] for s in resumed.opt_d.state.values()]
    assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in steps)
    _train(resumed, 2, fast=False, first=4)
