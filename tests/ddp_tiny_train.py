"""Launched by test_ddp.py under `torchrun --nproc_per_node=2`: 3 DDP steps of a tiny
model on CPU/gloo through the hw2_utils helpers, then a budget that runs out on rank 1 only;
each rank saves its weights, the sample indices it saw and the step its budget stopped at."""

import itertools
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

import hw2_utils as U
from hw2_utils import runs

out = sys.argv[1]
info, device = U.init_distributed(torch.device("cpu"))
U.seed_everything(0, info.rank)  # different per rank: DDP must still keep weights in sync
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
initial = [p.detach().clone() for p in model.parameters()]
ddp = DDP(model)
data = TensorDataset(
    torch.arange(32).float()[:, None].repeat(1, 4) / 32,
    torch.arange(32).float()[:, None] / 32,
    torch.arange(32),
)
sampler = U.make_train_sampler(data, seed=0)
loader = DataLoader(data, batch_size=4, sampler=sampler)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
seen = []
for _, (x, y, idx) in zip(range(3), loader):
    loss = torch.nn.functional.mse_loss(ddp(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    seen += idx.tolist()
U.log_main("rank0 only")
# --max-seconds where only rank 1's clock runs out (100 s a look, against 150): every rank must
# stop at the same step, or the next collective would wait forever
ticks = itertools.count(0.0, 100.0 if info.rank == 1 else 0.0)
runs.clock = lambda: next(ticks)
run = U.RunFolder(f"{out}/run", ckpt_every=100, main=info.is_main, max_seconds=150.0)
stopped_at = next(step for step in range(1, 10) if run.checkpoint_due(step, 9) and run.stopping)
torch.save(
    {
        "params": [p.detach() for p in U.unwrap(ddp).parameters()],
        "initial": initial,
        "seen": seen,
        "world": info.world_size,
        "stopped_at": stopped_at,
    },
    f"{out}/rank{info.rank}.pt",
)
U.cleanup_distributed()
