"""Data parallelism: torchrun processes, FSDP2 sharding, and the few collectives the loop needs.

    python -m rl.train ...                              one process, no torch.distributed at all
    torchrun --nproc_per_node N -m rl.train ...         N ranks, FSDP2 (`fully_shard`), nccl or gloo

Each decoder layer is one FSDP unit and the root (the logprob module around the model, so
the embedding, final norm and a tied lm_head stay one unit) is another. Gradients are
reduced with SUM, never AVG: every rank's loss is already divided by batch-wide (all-reduced)
token and sequence counts, so the sum of the ranks' gradients is the full-batch gradient
(and gloo's AVG has reduced as SUM before, pytorch#162338: the parity test catches either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """The number of processes this run will have (readable before any process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1


@dataclass
class Dist:
    """Where this process stands: rank, world size, device mesh. world == 1 and no mesh for a
    plain `python -m rl.train`, where every helper below is a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mesh: object = None  # torch DeviceMesh when distributed
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def main(self) -> bool:
        """The rank that logs, writes files and shows progress."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous slice of a list (rank order = list order when gathered)."""
        lo, hi = self.rank * len(items) // self.world, (self.rank + 1) * len(items) // self.world
        return items[lo:hi]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Elementwise sum over ranks of a dict of floats (the same keys on every rank)."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def max(self, values: dict[str, float]) -> dict[str, float]:
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def _all_reduce(self, values: dict[str, float], op) -> dict[str, float]:
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return dict(zip(keys, t.tolist()))

    def gather(self, items: list) -> list:
        """Concatenation of every rank's list, in rank order, on every rank."""
        if not self.distributed:
            return list(items)
        out: list = [None] * self.world
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def broadcast(self, obj, src: int = 0):
        """rank src's object, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        shutdown()


def shutdown() -> None:
    """Leave the process group together: a barrier, then destroy. A rank that tears gloo down
    while a peer is still busy (rank 0 writing files) can abort ("terminate called without an
    active exception"); after the barrier no rank has a collective left in flight."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return torch.device(name)


def init(device_name: str, timeout_s: float = 1800.0) -> Dist:
    """Single process unless launched by torchrun; then one process group (nccl on CUDA, gloo
    on CPU) and a 1-D device mesh over all ranks (explicit on CPU, pytorch#132471)."""
    if not launched_by_torchrun():
        return Dist(device=pick_device(device_name))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not cuda:
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device if cuda else None)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    return Dist(rank=rank, world=world, local_rank=local_rank, mesh=mesh, backend=backend, device=device)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks: modules whose class the model lists in _no_split_modules (what
    accelerate and TRL wrap), else get_decoder().layers."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        layers = list(getattr(model.get_decoder(), "layers", []))
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard: it names no "
                         "_no_split_modules and its decoder has no .layers")
    return layers


def shard(root: torch.nn.Module, model: torch.nn.Module, d: Dist, cpu_offload: bool, bf16: bool,
          reshard_after_forward: bool = True) -> None:
    """fully_shard each decoder layer, then the root (embedding, final norm, tied lm_head).
    On CUDA with bf16: bf16 parameters in forward/backward, fp32 gradient reduction."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if cpu_offload and d.device.type != "cuda":
        raise ValueError("trainer.fsdp.cpu_offload=true moves GPU shards to host memory; on CPU they are there "
                         "already: set it to false")
    kwargs: dict = {"mesh": d.mesh}
    if d.device.type == "cuda" and bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(root, **kwargs)
    for module in root.modules():
        if hasattr(module, "set_gradient_divide_factor"):  # every FSDP unit: reduce by SUM (see the docstring)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def reshard(root: torch.nn.Module) -> None:
    """Free unsharded parameters (the root keeps its own after a forward without backward),
    so that the next forward gathers the current shards."""
    for module in root.modules():
        if hasattr(module, "reshard") and hasattr(module, "set_gradient_divide_factor"):
            module.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a sharded DTensor; itself otherwise)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t
    mesh_device = t.device_mesh.device_type
    if t.to_local().device.type != mesh_device:  # CPU-offloaded shard: gather on the mesh's device
        local = t.to_local().to(mesh_device)
        t = DTensor.from_local(local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride())
    return t.full_tensor()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard (the tensor itself when not sharded)."""
    return t.to_local() if hasattr(t, "to_local") else t
