"""GAN losses, the gradient penalty, and one D update / one G update with their optimisers,
EMA and (under torchrun) gradient averaging. train.py runs the loop around GANTrainer;
the tests drive it directly."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hw2_utils import autocast, derived_seed, log_main, to_device
from p4_gan.data import batch
from p4_gan.diffaugment import diff_augment
from p4_gan.models import Discriminator, GANConfig, Generator

LOSSES = ("dcgan", "hinge", "wgan-gp")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss from its logits on real and on generated images."""
    if kind == "dcgan":  # binary cross-entropy on sigmoid(logit), written stably
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan-gp":  # the penalty is added by the caller
        return fake.mean() - real.mean()
    raise ValueError(f"unknown loss {kind!r}: use one of {LOSSES}")


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "dcgan":  # the non-saturating -log D(G(z)) of the GAN paper, as DCGAN trains
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}: use one of {LOSSES}")


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean of (||grad_x critic(x)||_2 - 1)^2 at random
    points x on the segments between real and fake images."""
    alpha = torch.rand(len(real), 1, 1, 1, generator=generator, device=generator.device)
    alpha = to_device(alpha.to(real.dtype), real.device)
    between = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def average_gradients(module: nn.Module) -> None:
    """Under torchrun, replace each rank's gradients by their mean over ranks. Done by hand,
    not by DDP: DDP cannot take the double backward of the gradient penalty, nor a D whose
    parameters are frozen for the G step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def assert_ranks_in_sync(*modules: nn.Module) -> None:
    """Under torchrun, fail loudly if any parameter differs between ranks (a sync bug)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([p.detach().flatten().double() for m in modules for p in m.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(
            f"ranks hold different weights (max gap {(high - low).abs().max().item():.3g})"
        )


@dataclass(frozen=True)
class Recipe:
    loss: str = "dcgan"
    diffaug: tuple[str, ...] = ()  # DiffAugment ops applied to everything D sees
    ema_decay: float = 0.0  # 0: export G itself
    gp_weight: float = 10.0  # wgan-gp only
    lr: float = 2e-4
    d_lr: float | None = None  # D's learning rate (TTUR, Heusel et al. 2017); None: lr
    betas: tuple[float, float] = (0.5, 0.999)
    lecam_weight: float = 0.0  # LeCam regulariser's weight in D's loss (Tseng et al. 2021); 0: off

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: use one of {LOSSES}")


LECAM_DECAY = 0.99  # the LeCam paper's moving average of D's mean outputs


def lecam_penalty(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    real_avg: torch.Tensor,
    fake_avg: torch.Tensor,
) -> torch.Tensor:
    """LeCam regulariser (Tseng et al. 2021, as their code writes it): D's outputs on real
    images are pulled down towards the moving average of its outputs on fakes where above it,
    and those on fakes up towards the real average where below it, which bounds how far D can
    separate a small training set."""
    return (
        F.relu(real_logits - fake_avg).square().mean()
        + F.relu(real_avg - fake_logits).square().mean()
    )


class GANTrainer:
    """G, D, their Adam optimisers and grad scalers, the EMA copy of G and the one seeded
    generator every random draw of training comes from (z, DiffAugment, the penalty's
    interpolation, flips); `state_dict` holds all of it, so a resumed run is the same run.

    Everything a step changes lives in tensors (the learning rates, the EMA's step count, LeCam's
    averages), so the same step can be replayed as a CUDA graph (p4_gan/fast_step.py). fast=True
    keeps the random generator on `device` as well (on a GPU: other numbers than the CPU
    generator's, equally seeded) and makes Adam capturable there."""

    def __init__(
        self,
        config: GANConfig,
        recipe: Recipe,
        device: torch.device = torch.device("cpu"),
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        rank: int = 0,
        fast: bool = False,
    ):
        if recipe.loss == "wgan-gp" and config.d_norm == "batch":
            raise ValueError(
                "wgan-gp penalises per-sample gradients, which batch norm in D couples: "
                "use d_norm 'none' or 'spectral' (--d-norm)"
            )
        if fast and dtype is torch.float16:
            raise ValueError(
                "the fast step takes fp32 or bf16: fp16's loss scaler syncs with the host"
            )
        self.config, self.recipe, self.device, self.dtype = config, recipe, device, dtype
        self.seed, self.rank, self.fast = seed, rank, fast
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same initial weights on every rank
            self.G, self.D = Generator(config).to(device), Discriminator(config).to(device)
        self.ema = (
            copy.deepcopy(self.G).eval().requires_grad_(False) if recipe.ema_decay > 0 else None
        )
        cuda = device.type == "cuda"
        self.lr_g, self.lr_d = recipe.lr, recipe.d_lr or recipe.lr
        # Fused on CUDA: one kernel per step instead of several per tensor (the small nets' steps are
        # launch-bound), and it takes the fp16 scaler's inf check without a host sync. The learning
        # rates are tensors on the device, so a schedule changes them without re-capturing a graph.
        self.opt_g, self.opt_d = (
            torch.optim.Adam(
                net.parameters(),
                lr=torch.tensor(lr, device=device),
                betas=recipe.betas,
                fused=cuda,
                capturable=fast and cuda,
            )
            for net, lr in ((self.G, self.lr_g), (self.D, self.lr_d))
        )
        fp16 = dtype is torch.float16
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        # differs per rank: each draws its own z
        self.noise = torch.Generator(device if fast else "cpu").manual_seed(
            derived_seed(seed, "noise", rank)
        )
        # False: state_dict leaves Adam's moments out (None), so a resumed run starts Adam afresh
        self.keep_optimizer_state = True
        self.g_steps = 0  # the count state_dict keeps; g_count is its copy on the device
        self.g_count = torch.zeros((), device=device)
        # LeCam's moving averages of D's mean output on real and on generated images
        self.lecam_avg = torch.zeros(2, device=device)

    def sample_z(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.config.z_dim, generator=self.noise, device=self.noise.device)
        return to_device(z, self.device)

    def real_batch(self, faces: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """faces[indices] in [-1, 1], each mirrored with p = 0.5 (drawn from the run's generator)."""
        flips = torch.rand(len(indices), generator=self.noise, device=self.noise.device) < 0.5
        return batch(faces, indices, flips)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.recipe.diffaug, self.noise)

    def set_lr_scale(self, scale: float) -> None:
        """Both learning rates at `scale` times the recipe's (a schedule's value at this step)."""
        for opt, base in ((self.opt_g, self.lr_g), (self.opt_d, self.lr_d)):
            for group in opt.param_groups:
                group["lr"].fill_(base * scale)

    def _update(
        self,
        loss: torch.Tensor,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # before the scaler's inf check, so every rank skips or steps alike
        average_gradients(module)
        scaler.step(opt)
        scaler.update()

    def d_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One D update on a real batch (in [-1, 1]) against as many fresh fakes. Returns
        detached scalars: the loss and D's mean logit on real and on fake images."""
        # no autocast cache in a step a CUDA graph records (autocast() says why)
        with torch.no_grad(), autocast(self.device, self.dtype, cache=not self.fast):
            fake = self.G(self.sample_z(len(real))).float()
        with autocast(self.device, self.dtype, cache=not self.fast):
            real_in, fake_in = self.augment(real), self.augment(fake)
            real_logits, fake_logits = self.D(real_in).float(), self.D(fake_in).float()
            loss = discriminator_loss(self.recipe.loss, real_logits, fake_logits)
        stats = {
            "d_loss": loss.detach(),
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
        }
        if self.recipe.loss == "wgan-gp":
            # fp32: a second derivative
            penalty = gradient_penalty(self.D, real_in.float(), fake_in.float(), self.noise)
            loss = loss + self.recipe.gp_weight * penalty
            stats["gp"] = penalty.detach()
        if self.recipe.lecam_weight > 0:
            means = torch.stack([stats["d_real"], stats["d_fake"]])
            self.lecam_avg.lerp_(means, 1 - LECAM_DECAY)
            penalty = lecam_penalty(real_logits, fake_logits, *self.lecam_avg)
            loss = loss + self.recipe.lecam_weight * penalty
            stats["lecam"] = penalty.detach()
        self._update(loss, self.D, self.opt_d, self.scaler_d)
        return stats

    def g_step(self, batch_size: int) -> dict[str, torch.Tensor]:
        stats = self.g_update(batch_size)
        self.g_steps += 1
        return stats

    def g_update(self, batch_size: int) -> dict[str, torch.Tensor]:
        """One G update, and the EMA's; D is frozen meanwhile so its weights get no gradient.
        Changes tensors only (g_step also counts it), so a CUDA graph can replay it."""
        self.D.requires_grad_(False)
        try:
            with autocast(self.device, self.dtype, cache=not self.fast):
                logits = self.D(self.augment(self.G(self.sample_z(batch_size)))).float()
                loss = generator_loss(self.recipe.loss, logits)
            self._update(loss, self.G, self.opt_g, self.scaler_g)
        finally:
            self.D.requires_grad_(True)
        self.g_count += 1
        if self.ema is not None:
            self._update_ema()
        return {"g_loss": loss.detach()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Short horizon at the start, so the average does not drag the random initial weights along.
        decay = ((1 + self.g_count) / (10 + self.g_count)).clamp(max=self.recipe.ema_decay)
        averaged = list(self.ema.parameters())
        # a list of tensor weights: the one-tensor overload reads its value on the host (a sync)
        torch._foreach_lerp_(averaged, list(self.G.parameters()), [1 - decay] * len(averaged))
        for e, b in zip(self.ema.buffers(), self.G.buffers()):
            e.copy_(b)

    def exported_generator(self) -> Generator:
        """What gets shipped: the EMA generator when there is one, else G."""
        return self.ema if self.ema is not None else self.G

    def state_dict(self) -> dict:
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict() if self.keep_optimizer_state else None,
            "opt_d": self.opt_d.state_dict() if self.keep_optimizer_state else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "noise": self.noise.get_state(),
            "g_steps": self.g_steps,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        # LeCam's averages as numbers, not a tensor: --compact-checkpoint keeps them exact
        if self.recipe.lecam_weight > 0:
            state["lecam_avg"] = self.lecam_avg.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        for opt, name in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            if state[name] is None:  # saved without: Adam starts afresh, at the current lr
                continue
            # load_state_dict brings back the saved groups' settings; keep this run's: its lr
            # tensors (a graph may hold them, the saved value goes into them) and how Adam steps
            # (a capturable GPU Adam's state resumed on the CPU, or the reverse)
            mine = [
                {k: g[k] for k in ("lr", "fused", "capturable", "foreach") if k in g}
                for g in opt.param_groups
            ]
            opt.load_state_dict(state[name])
            for group, kept in zip(opt.param_groups, mine):
                saved_lr = float(group["lr"])
                group.update(kept)
                group["lr"].fill_(saved_lr)
                # a capturable or fused Adam counts its steps on the device, the others on the CPU
                on_device = group.get("capturable") or group.get("fused")
                for param in group["params"]:
                    if "step" in opt.state.get(param, {}):
                        step = opt.state[param]["step"]
                        opt.state[param]["step"] = step.to(
                            param.device if on_device else "cpu", torch.float32
                        )
        if state["scaler_g"]:  # empty unless the run was fp16; --precision may change on resume
            self.scaler_g.load_state_dict(state["scaler_g"])
            self.scaler_d.load_state_dict(state["scaler_d"])
        if len(state["noise"]) == len(self.noise.get_state()):
            self.noise.set_state(state["noise"])
        else:  # drawn on another kind of device (--fast-step on a GPU, or not): a new stream
            self.noise.manual_seed(derived_seed(self.seed, "noise", self.rank, state["g_steps"]))
            log_main(
                "note: the saved random state is another device's generator: random numbers "
                f"reseeded at G step {state['g_steps']} (the run goes on, not bit for bit)"
            )
        self.g_steps = state["g_steps"]
        self.g_count.fill_(self.g_steps)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.recipe.lecam_weight > 0:
            self.lecam_avg.copy_(torch.tensor(state["lecam_avg"]))
