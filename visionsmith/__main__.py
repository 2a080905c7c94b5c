import sys

from .cli import main

if __name__ == "__main__":
    from .engine.distributed import current, run_worker
    if current().enabled:
        # A torchrun worker leaves through os._exit once its work is done and flushed: interpreter
        # teardown could otherwise destroy gloo/NCCL threads out of order and abort ("terminate called
        # without an active exception", seen once in CI after a finished DDP run). faulthandler names
        # the Python stack should a worker still crash.
        run_worker(main)
    sys.exit(main())
