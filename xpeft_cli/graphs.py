"""CUDA graphs for serving and training: capture a forward (or a whole training step) once per
padded batch shape, then replay it.

A forward of a bert-base-sized encoder is a few hundred small kernels. Where the host issues
them more slowly than the GPU runs them (measured on an H100 at 64×128: 13.4 ms a batch eager,
6.1 ms of it GPU kernels), replaying a captured graph removes the launch cost. Graphs need fixed shapes and no
host syncs: batches are padded to `batch_size` rows and to a length bucket, and the model runs
its per-row route (RoutedModel.forward_rows), which mixes Â, B̂ for every row on the device.
A fit's step is captured whole (GraphedTrainStep): forward, loss, backward and AdamW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fused
from .batches import compute_context


class _BucketedGraphs:
    """Graphs keyed by (length bucket, token types): static inputs of `rows` × bucket tokens that
    every call pads into, and one memory pool that the graphs share."""

    def __init__(self, rows: int, max_length: int, device: torch.device, precision: str, bucket: int, pad_id: int):
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.rows, self.max_length, self.device = rows, max_length, device
        self.precision, self.bucket, self.pad_id = precision, bucket, pad_id
        self.graphs: dict[tuple[int, bool], tuple] = {}
        self.pool = None

    def length(self, t: int) -> int:
        return min(self.max_length, -(-t // self.bucket) * self.bucket)

    def key(self, batch: dict[str, torch.Tensor]) -> tuple[int, bool]:
        n, t = batch["input_ids"].shape
        if n > self.rows:
            raise ValueError(f"batch of {n} rows, graphs hold {self.rows}")
        return self.length(t), "token_type_ids" in batch

    def _inputs(self, length: int, token_types: bool) -> dict[str, torch.Tensor]:
        shape = (self.rows, length)
        static = {
            "input_ids": torch.zeros(shape, dtype=torch.long, device=self.device),
            "attention_mask": torch.ones(shape, dtype=torch.long, device=self.device),
        }
        if token_types:
            static["token_type_ids"] = torch.zeros(shape, dtype=torch.long, device=self.device)
        return static

    def _copy_in(self, static: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """`batch` into the static inputs; rows past its end are padding with one attention token
        each (an all-masked row would give NaNs)."""
        n, t = batch["input_ids"].shape
        full = n == self.rows and t == static["input_ids"].shape[1]  # the common case: a copy per input
        for name, value in batch.items():
            if not full:
                static[name].fill_(self.pad_id if name == "input_ids" else 0)
            static[name][:n, :t].copy_(value)
        if n < self.rows:
            static["attention_mask"][n:, 0] = 1

    def _capture(self, fn, **kw):
        graph, out = capture(fn, self.device, pool=self.pool, **kw)
        self.pool = graph.pool()
        return graph, out


class GraphedForward(_BucketedGraphs):
    """RoutedModel.forward_rows as CUDA graphs, one per (length bucket, token types) shape.

    Rows past a batch's end are padding: one attention token each, profile 0, their outputs dropped.
    """

    def __init__(
        self,
        model,
        batch_size: int,
        max_length: int,
        device: torch.device,
        precision: str = "auto",
        bucket: int = 32,
        pad_id: int = 0,
    ):
        super().__init__(batch_size, max_length, device, precision, bucket, pad_id)
        self.model = model

    def __call__(self, batch: dict[str, torch.Tensor], row_ids: torch.Tensor) -> torch.Tensor:
        """Outputs for `batch` (on the device) whose rows have profiles `row_ids` (CPU or device)."""
        key = self.key(batch)
        if key not in self.graphs:
            self.graphs[key] = self._capture_forward(*key)
        graph, static, out = self.graphs[key]
        n = batch["input_ids"].shape[0]
        self._copy_in(static, batch)
        if n < self.rows:
            static["row_ids"][n:].zero_()
        static["row_ids"][:n].copy_(row_ids, non_blocking=True)
        graph.replay()
        return out[:n].clone()

    @torch.no_grad()
    def _capture_forward(self, length: int, token_types: bool):
        static = self._inputs(length, token_types)
        static["row_ids"] = torch.zeros(self.rows, dtype=torch.long, device=self.device)

        def forward():
            with compute_context(self.device, self.precision, cache_casts=False):
                return self.model.forward_rows(**static)

        graph, out = self._capture(forward)
        return graph, static, out


class GraphedTrainStep(_BucketedGraphs):
    """A fit's training step (forward, loss, backward, AdamW) as CUDA graphs, one per length bucket.

    Batches are padded to `rows` rows and to a bucket of `bucket` tokens. Padded rows hold one
    attention token and weigh 0 in the loss, which is the mean over the real rows, as an eager
    step's: they give no gradient. Each graph writes gradient buffers of its own (grads are None
    when it is captured) and reads them in its own AdamW step; the optimizer state is shared.
    The optimizer must be capturable, with its learning rates in device tensors that the caller
    sets before each call. Warm-up runs before a capture are undone (parameters and optimizer
    state restored in place), so a graphed fit takes exactly the steps it counts.
    """

    def __init__(
        self,
        model,
        opt: torch.optim.Optimizer,
        task_regression: bool,
        rows: int,
        max_length: int,
        device: torch.device,
        precision: str = "auto",
        bucket: int = 32,
        pad_id: int = 0,
        generators=(),
    ):
        super().__init__(rows, max_length, device, precision, bucket, pad_id)
        if not opt.defaults.get("capturable"):
            raise ValueError("a graphed step needs a capturable optimizer")
        self.model, self.opt, self.regression = model, opt, task_regression
        self.generators = list(generators)

    def __call__(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """One step on `batch` (on the device) with `targets` (n,): returns the loss (0-d, on the device)."""
        key = self.key(batch)
        if key not in self.graphs:
            self.graphs[key] = self._capture_step(*key, batch, targets)
        graph, static, loss = self.graphs[key]
        self._fill(static, batch, targets)
        graph.replay()
        return loss

    def _fill(self, static: dict, batch: dict, targets: torch.Tensor) -> None:
        n = batch["input_ids"].shape[0]
        self._copy_in(static, batch)
        static["targets"].zero_()
        static["targets"][:n].copy_(targets.to(self.device, non_blocking=True))
        static["weight"].zero_()
        static["weight"][:n] = 1.0 / n

    def _capture_step(self, length: int, token_types: bool, batch: dict, targets: torch.Tensor):
        static = self._inputs(length, token_types)
        static["targets"] = torch.zeros(
            self.rows, dtype=torch.float32 if self.regression else torch.long, device=self.device
        )
        static["weight"] = torch.zeros(self.rows, device=self.device)
        self._fill(static, batch, targets)  # warm up on a real batch
        inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in static]
        lossfn = F.mse_loss if self.regression else F.cross_entropy

        def step() -> torch.Tensor:
            self.opt.zero_grad(set_to_none=True)  # at capture: this graph's own, freshly written grads
            with compute_context(self.device, self.precision, cache_casts=False):
                out = self.model(**{k: static[k] for k in inputs})
            loss = (lossfn(out.float(), static["targets"], reduction="none") * static["weight"]).sum()
            loss.backward()
            self.opt.step()
            return loss.detach()

        saved = self._snapshot()
        try:
            graph, loss = self._capture(step, generators=self.generators, after_warmup=lambda: self._restore(saved))
        finally:
            self.opt.zero_grad(set_to_none=True)  # the next capture must not accumulate into these
        return graph, static, loss

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def _snapshot(self):
        params = self._params()
        state = [{k: v.clone() for k, v in self.opt.state[p].items() if torch.is_tensor(v)} for p in params]
        return [p.detach().clone() for p in params], state

    @torch.no_grad()
    def _restore(self, saved) -> None:
        """Undo the warm-up steps in place: graphs captured before hold these very tensors. State
        that the warm-up created goes back to zeros, where a first AdamW step starts."""
        for p, value, before in zip(self._params(), *saved):
            p.copy_(value)
            for k, t in self.opt.state.get(p, {}).items():
                if torch.is_tensor(t) and k in before:
                    t.copy_(before[k])
                elif torch.is_tensor(t):
                    t.zero_()


def capture(fn, device: torch.device, warmup: int = 2, pool=None, generators=(), after_warmup=None):
    """(graph, fn's output) with fn() captured as a CUDA graph, after `warmup` runs on a side
    stream (as capture requires). Autocast inside fn must not cache casts; custom generators
    that fn draws from must be listed, so that every replay advances them. Inside a graph the
    host's time no longer counts, so fn runs with the fused kernels (fused.py), compiled by the
    warm-up runs. `after_warmup()` runs between warm-up and capture (to undo side effects)."""
    with fused.compiled():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        if after_warmup is not None:
            after_warmup()
        graph = torch.cuda.CUDAGraph()
        for g in generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    return graph, out
