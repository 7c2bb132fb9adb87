"""Weight sync that crosses machines (engine=vllm_server engine.sync=broadcast).

The trainer's rank 0 and the vLLM server's workers form a small torch process group of their
own (no global state, like TRL's vllm-serve client): the first worker hosts its rendezvous
on engine.sync_port of the server's host and the trainer connects to it, so nothing but
that port and the HTTP one has to be reachable. gloo carries CPU tensors, nccl GPU ones.
Each tensor goes as a header (name, dtype, shape as JSON) then the data, broadcast from
the trainer; an empty header ends the stream. Every worker writes what it receives into a
folder in its own RAM and reloads it in place (the same reload as the one-machine path).

Both sides import this module: it needs only torch.
"""

from __future__ import annotations

import json
from datetime import timedelta

import torch

TRAINER = 0  # the trainer's rank in the group; workers are 1..N


class Group:
    def __init__(self, host: str, port: int, rank: int, world: int, backend: str, timeout_s: float):
        """Blocks until all `world` members have joined (or timeout_s passes)."""
        from torch.distributed import PrefixStore, TCPStore

        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world, self.backend = rank, world, backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.store = TCPStore(host, port, world_size=world, is_master=(rank == 1), timeout=timeout,
                              wait_for_workers=False)
        prefix = PrefixStore("toolcall-rl-weights", self.store)
        if backend == "gloo":
            from torch.distributed import ProcessGroupGloo

            self.pg = ProcessGroupGloo(prefix, rank, world, timeout)
        elif backend == "nccl":
            from torch.distributed import ProcessGroupNCCL

            options = ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = ProcessGroupNCCL(prefix, rank, world, options)
        else:
            raise ValueError(f"engine.sync_backend={backend!r}: use gloo (CPU tensors) or nccl (GPU tensors)")

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        from torch.distributed import BroadcastOptions

        opts = BroadcastOptions()
        opts.rootRank = TRAINER
        self.pg.broadcast([tensor], opts).wait()
        return tensor

    # trainer side
    def send(self, name: str, tensor: torch.Tensor) -> None:
        header = json.dumps({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                             "shape": list(tensor.shape)}).encode()
        self._send_bytes(header)
        self._broadcast(tensor.to(self.device).contiguous())

    def end(self) -> None:
        self._send_bytes(b"")

    def _send_bytes(self, data: bytes) -> None:
        self._broadcast(torch.tensor([len(data)], dtype=torch.int64, device=self.device))
        if data:
            self._broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device))

    # worker side
    def receive(self):
        """Yields (name, CPU tensor) until the trainer ends the stream."""
        while True:
            n = int(self._broadcast(torch.zeros(1, dtype=torch.int64, device=self.device)).item())
            if n == 0:
                return
            raw = self._broadcast(torch.empty(n, dtype=torch.uint8, device=self.device)).cpu().numpy().tobytes()
            header = json.loads(raw)
            tensor = torch.empty(header["shape"], dtype=getattr(torch, header["dtype"]), device=self.device)
            yield header["name"], self._broadcast(tensor).cpu()

    def close(self) -> None:
        try:
            self.pg.shutdown()
        except Exception:  # noqa: BLE001  closing a group whose peer is gone must not mask the real error
            pass
