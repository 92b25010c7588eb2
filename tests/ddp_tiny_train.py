"""Launched by test_ddp.py under `torchrun --nproc_per_node=2`: 3 DDP steps of a tiny
model on CPU/gloo through the hw2_utils helpers; each rank saves its weights and the
sample indices it saw."""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

import hw2_utils as U

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
torch.save(
    {
        "params": [p.detach() for p in U.unwrap(ddp).parameters()],
        "initial": initial,
        "seen": seen,
        "world": info.world_size,
    },
    f"{out}/rank{info.rank}.pt",
)
U.cleanup_distributed()
