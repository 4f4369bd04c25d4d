"""CUDA graphs for serving: capture the routed forward once per padded batch shape, then replay it.

A forward of a bert-base-sized encoder is a few hundred small kernels. Where the host issues
them more slowly than the GPU runs them (measured on an H100 at 64×128: 13.4 ms a batch eager,
6.1 ms of it GPU kernels), replaying a captured graph removes the launch cost. Graphs need fixed shapes and no
host syncs: batches are padded to `batch_size` rows and to a length bucket, and the model runs
its per-row route (RoutedModel.forward_rows), which mixes Â, B̂ for every row on the device.
"""
from __future__ import annotations

import torch

from . import fused
from .train import compute_context


class GraphedForward:
    """RoutedModel.forward_rows as CUDA graphs, one per (length bucket, token types) shape.

    Rows past a batch's end are padding: one attention token each (an all-masked row would
    give NaNs), profile 0, their outputs dropped. Graphs share one memory pool.
    """

    def __init__(self, model, batch_size: int, max_length: int, device: torch.device, precision: str = "auto",
                 bucket: int = 32, pad_id: int = 0):
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.rows, self.max_length, self.device = model, batch_size, max_length, device
        self.precision, self.bucket, self.pad_id = precision, bucket, pad_id
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.pool = None

    def length(self, t: int) -> int:
        return min(self.max_length, -(-t // self.bucket) * self.bucket)

    def __call__(self, batch: dict[str, torch.Tensor], row_ids: torch.Tensor) -> torch.Tensor:
        """Outputs for `batch` (on the device) whose rows have profiles `row_ids` (CPU or device)."""
        n, t = batch["input_ids"].shape
        if n > self.rows:
            raise ValueError(f"batch of {n} rows, graphs hold {self.rows}")
        key = (self.length(t), "token_type_ids" in batch)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, static, out = self.graphs[key]
        full = n == self.rows and t == key[0]  # the common case: no padding to write, a copy per input
        for name, value in batch.items():
            if not full:
                static[name].fill_(self.pad_id if name == "input_ids" else 0)
            static[name][:n, :t].copy_(value)
        if n < self.rows:
            static["attention_mask"][n:, 0] = 1
            static["row_ids"][n:].zero_()
        static["row_ids"][:n].copy_(row_ids, non_blocking=True)
        graph.replay()
        return out[:n].clone()

    def _inputs(self, length: int, token_types: bool) -> dict[str, torch.Tensor]:
        shape = (self.rows, length)
        static = {"input_ids": torch.zeros(shape, dtype=torch.long, device=self.device),
                  "attention_mask": torch.ones(shape, dtype=torch.long, device=self.device),
                  "row_ids": torch.zeros(self.rows, dtype=torch.long, device=self.device)}
        if token_types:
            static["token_type_ids"] = torch.zeros(shape, dtype=torch.long, device=self.device)
        return static

    @torch.no_grad()
    def _capture(self, length: int, token_types: bool):
        static = self._inputs(length, token_types)

        def forward():
            with compute_context(self.device, self.precision, cache_casts=False):
                return self.model.forward_rows(**static)

        graph, out = capture(forward, self.device, pool=self.pool)
        self.pool = graph.pool()
        return graph, static, out


def capture(fn, device: torch.device, warmup: int = 2, pool=None, generators=()):
    """(graph, fn's output) with fn() captured as a CUDA graph, after `warmup` runs on a side
    stream (as capture requires). Autocast inside fn must not cache casts; custom generators
    that fn draws from must be listed, so that every replay advances them. Inside a graph the
    host's time no longer counts, so fn runs with the fused kernels (fused.py), compiled by the
    warm-up runs."""
    with fused.compiled():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for g in generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    return graph, out
