"""DDP through torchrun on CPU (gloo): both ranks must end with identical weights."""

from pathlib import Path

import torch

from conftest import run_torchrun


def test_torchrun_two_ranks_stay_in_sync(tmp_path):
    r = run_torchrun(
        [str(Path(__file__).with_name("ddp_tiny_train.py")), str(tmp_path)], timeout=120
    )
    assert r.stdout.count("rank0 only") == 1  # log_main prints on rank 0 alone
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    assert all(s["world"] == 2 for s in ranks)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    # Training happened, and the sampler gave the ranks disjoint shards.
    assert any(not torch.equal(p, q) for p, q in zip(ranks[0]["params"], ranks[0]["initial"]))
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 12
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == 1  # rank 1's budget stops both
