"""`--devices N`: run this same command as N data-parallel processes (what `accelerate launch` does).

The worker processes get the environment accelerate and torchrun set (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT). Rank 0 prints and writes; the others are silent. Unlike a
bare launcher, a failure keeps xpeft's contract: the failing rank's one-line error and its
exit code, and the other ranks are stopped rather than left waiting on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from ..errors import UsageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            out.append(a)
    return out


def relaunch(argv: list[str], devices: int, device: str) -> int:
    """Run `xpeft argv` (minus --devices) as `devices` processes; return the run's exit code."""
    import torch

    from ..distributed import check_process_device, launched_size

    if launched_size() > 1:
        raise UsageError(
            "--devices: this process was already started by a launcher (accelerate launch, torchrun); drop --devices"
        )
    check_process_device(device)
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if gpus and devices > gpus:
        raise UsageError(f"--devices {devices}: only {gpus} GPUs here")
    args = [sys.executable, "-m", "xpeft_cli", *_without_devices(argv)]
    base = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(devices),
        LOCAL_WORLD_SIZE=str(devices),
    )
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    procs, errs = [], []
    try:
        for rank in range(devices):
            env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            err = None if rank == 0 else tempfile.TemporaryFile()  # shown only if that rank is the one failing
            errs.append(err)
            procs.append(subprocess.Popen(args, env=env, stdout=None if rank == 0 else subprocess.DEVNULL, stderr=err))
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        if failed is None:
            failed = next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        if failed is None:
            return 0
        if failed != 0:  # bad input fails every rank alike: let rank 0 say so itself
            try:
                procs[0].wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if procs[0].returncode not in (None, 0):
                failed = 0
        code = procs[failed].returncode
        for p in procs:  # the others would wait for the failed rank forever
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        if failed != 0 and errs[failed] is not None:
            errs[failed].seek(0)
            lines = errs[failed].read().decode("utf-8", "replace").strip().splitlines()
            if lines:
                print(f"{lines[-1]} (process {failed})", file=sys.stderr)
        return code if code > 0 else 1
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    finally:
        for e in errs:
            if e is not None:
                e.close()
