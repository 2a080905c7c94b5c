"""torch.distributed glue for runs launched by ``torchrun`` (one node or many); a no-op otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device.

    gloo on CPU, nccl on CUDA; each process takes the GPU of its LOCAL_RANK.
    """
    d = current()
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", d.local_rank) if use_cuda else torch.device(device_pref if device_pref not in ("auto",) else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, device


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank (e.g. the run folder path, an early-stop decision)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_scalar(x: float, d: Dist, device: torch.device) -> float:
    if not d.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / d.world


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def current() -> Dist:
    """This process's place in the job, from torchrun's environment variables."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def run_worker(main) -> None:
    """Run a torchrun worker's ``main`` and leave through ``os._exit`` with its exit code.

    Everything the run writes is closed by then; skipping interpreter teardown avoids the
    process-group threads being torn down out of order (an abort after a finished run).
    """
    import faulthandler
    import logging
    import sys
    import traceback
    faulthandler.enable()
    try:
        rc = main()
    except SystemExit as e:  # argparse errors and `raise SystemExit("message")`
        rc = e.code
    except BaseException:  # noqa: BLE001 - printed as Python would, then a failing exit code
        traceback.print_exc()
        rc = 1
    if isinstance(rc, str):
        print(rc, file=sys.stderr)
        rc = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(rc or 0))
