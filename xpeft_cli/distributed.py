"""Data parallelism over processes, through accelerate: one fit, W workers, the same result.

Two ways to share a fit, chosen by what is trained:
- many profiles (fit --profile-column, bank create --from-profiles): profiles are dealt to the
  processes, balanced by rows. A profile's steps, order, noise and schedule are its own, so its
  result does not depend on how many processes there are. Results are gathered on every rank.
- parameters everyone shares (one profile's masks; an mtl bank's shared head): each process
  takes its share of every batch, and gradients are summed over processes before the step, so
  each step uses the gradient of the whole batch, as one process would.

Processes are started by `--devices N` (cli/launch.py), `accelerate launch -m xpeft_cli …` or
torchrun; all of them set RANK / WORLD_SIZE / MASTER_ADDR, which is how a worker knows it is one.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass, field

import torch

from .errors import UsageError


def launched_size() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Only rank 0 prints and writes; cheap, usable before the process group exists."""
    return os.environ.get("RANK", "0") in ("", "0")


@dataclass
class World:
    size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_grads_(self, params: list[torch.nn.Parameter], extra: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum the gradients of `params` (and the small tensor `extra`) over processes, in one all-reduce.

        A parameter without a gradient on this rank (its rows were elsewhere) counts as zeros.
        Returns the summed `extra`.
        """
        if self.size == 1:
            return extra
        flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        if extra is not None:
            flat.append(extra.reshape(-1).float().to(self.device))
        buf = torch.cat(flat) if flat else torch.zeros(0, device=self.device)
        torch.distributed.all_reduce(buf)
        pos = 0
        for p in params:
            p.grad = buf[pos : pos + p.numel()].view_as(p).to(p.dtype).clone()
            pos += p.numel()
        return buf[pos:].view_as(extra) if extra is not None else None

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def max(self, value: int) -> int:
        return max(self.gather(value))


def check_process_device(device: str) -> None:
    """With several processes each takes its own device: only auto, cuda (with a GPU) or cpu make sense."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {device}: with several processes each one takes its own GPU; use auto, cuda or cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU here")


def pick_device(name: str = "auto") -> torch.device:
    """The device a process computes on: "auto" is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index is not None and dev.index >= torch.cuda.device_count())
    ):
        raise UsageError(f"--device {name}: no such CUDA device here (use auto or cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return dev


_WORLD: World | None = None


def world(device: str = "auto") -> World:
    """This process's place in the run; starts the process group (gloo on CPU, NCCL on GPUs) once."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = launched_size()
    if size == 1:
        return World(1, 0, pick_device(device))
    check_process_device(device)
    from accelerate import PartialState  # on CPU it sets the threads per process unless OMP_NUM_THREADS is set

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    _WORLD = World(state.num_processes, state.process_index, state.device)
    atexit.register(_close)
    return _WORLD


_FAILED = False


def mark_failed() -> None:
    """This process is exiting on an error: it must not wait at the exit barrier for ranks that never come."""
    global _FAILED
    _FAILED = True


def _close() -> None:
    """At exit: wait for every rank (rank 0 may still be writing), then tear the group down.

    A rank that failed skips the wait (the others may be inside a collective; the launcher
    stops them), as does one ending on an unhandled exception.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if not (_FAILED or hasattr(sys, "last_value")):
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def deal(work: dict[str, int], size: int) -> list[list[str]]:
    """Split names over `size` processes, balancing the summed work (largest first onto the least loaded).

    Deterministic: ties go by name, then by rank. Each list keeps the names' original order.
    """
    if size > len(work):
        raise UsageError(f"{size} processes for {len(work)} profiles: use at most one process per profile")
    loads, owner = [0] * size, {}
    for name, w in sorted(work.items(), key=lambda kv: (-kv[1], kv[0])):
        r = min(range(size), key=lambda i: (loads[i], i))
        owner[name] = r
        loads[r] += w
    return [[n for n in work if owner[n] == r] for r in range(size)]


def share(rows: list[int], w: World) -> tuple[list[int], float]:
    """This rank's rows of a batch and the weight of its mean loss (its share of the batch).

    A rank left without rows still runs one row with weight 0: every rank then draws the
    same mask noise and reaches the same collectives.
    """
    mine = rows[w.rank :: w.size]
    if not mine:
        return rows[:1], 0.0
    return mine, len(mine) / len(rows)
