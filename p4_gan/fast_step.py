"""train.py's step with --fast-step: on a GPU, the D update and the G update are each recorded
once as a CUDA graph and then replayed, one launch per update instead of hundreds.

Why: at batch 64-128 the DCGAN networks' kernels take microseconds, so the plain step is bound by
Python and kernel launches (the shipped run: 39 D steps/s on an H200, the GPU mostly idle). A
graph replays the same kernels on the same memory, so everything a step changes must live in
tensors that stay put: the real batch is gathered on the GPU from a fixed index buffer, every
random draw comes from a generator on the GPU (GANTrainer(fast=True)), the learning rates, the
EMA's step count and LeCam's averages are tensors, Adam is capturable and autocast does not cache
casts. tests/test_p4_fast_step.py checks on the CPU (where nothing is captured) that this step
equals the plain one and that two steps issue the same operations with the same constants and
no host sync: what a replay needs.
"""

from __future__ import annotations

import torch

from p4_gan.gan import GANTrainer

# Eager calls of each update before its capture, on a side stream as PyTorch's CUDA graph notes
# ask: cuDNN's benchmark and Adam's state are set up by the first calls, not inside a graph.
WARMUP_CALLS = 3


class FastSteps:
    """Calling it does train.py's train_step (a D step on faces[indices], flipped at random,
    and a G step every `d_steps`-th step) and returns the same statistics. On a GPU they are
    the graph's output tensors, overwritten by the next replay: read or add them before then."""

    def __init__(self, trainer: GANTrainer, faces: torch.Tensor, batch_size: int, d_steps: int):
        if trainer.noise.device != faces.device:
            raise ValueError("the fast step needs GANTrainer(fast=True) on the faces' device")
        self.trainer, self.faces, self.d_steps = trainer, faces, d_steps
        self.indices = torch.zeros(batch_size, dtype=torch.long, device=faces.device)
        self.capture = faces.device.type == "cuda"
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[str, dict] = {}
        self.calls = {"d": 0, "g": 0}

    def _d_update(self) -> dict:
        return self.trainer.d_step(self.trainer.real_batch(self.faces, self.indices))

    def _g_update(self) -> dict:
        return self.trainer.g_update(len(self.indices))

    def __call__(self, indices: torch.Tensor, step: int) -> dict:
        """`indices`: this step's batch, on the faces' device; `step` counts from 1."""
        self.indices.copy_(indices)
        stats = self._run("d", self._d_update)
        if step % self.d_steps == 0:
            stats = {**stats, **self._run("g", self._g_update)}
            self.trainer.g_steps += 1
        return stats

    def _run(self, name: str, update) -> dict:
        if not self.capture:
            return update()
        if name not in self.graphs:
            self.calls[name] += 1
            if self.calls[name] <= WARMUP_CALLS:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    stats = update()
                torch.cuda.current_stream().wait_stream(side)
                return stats
            graph = torch.cuda.CUDAGraph()
            # the graph advances the generator's offset at each replay, so every replay draws anew
            graph.register_generator_state(self.trainer.noise)
            with torch.cuda.graph(graph):
                self.outputs[name] = update()  # recorded, not run: the replay below runs it
            self.graphs[name] = graph
        self.graphs[name].replay()
        return self.outputs[name]
