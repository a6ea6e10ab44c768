"""Padded CUDA graphs (``serve_app/model/cuda_graphs.py``): which graph a call takes, and its padding, on CPU."""

from __future__ import annotations

import dataclasses

import torch

from serve_app.model.cuda_graphs import PaddedGraphs


def test_graphs_are_captured_for_a_few_batch_sizes_and_a_call_takes_the_smallest_that_holds_it() -> None:
    """nano-vllm's sizes (1, 2, 4, 8, every 16, the slots); a call copies its rows into the graph's buffers and
    zeroes the padding; one the graphs cannot hold (too many rows, another key) is left to the eager path."""
    seen = []

    @dataclasses.dataclass
    class Rows:
        values: torch.Tensor

        def first(self, rows: int) -> Rows:
            return Rows(self.values[:rows].clone())

    def compute(inputs: Rows, key: int) -> Rows:
        seen.append((inputs.values.clone(), key))
        return Rows(inputs.values * key)

    graphs = PaddedGraphs("test", compute, lambda rows: Rows(torch.full((rows,), 9.0)), 96, [1, 2], capture=False)
    assert graphs.sizes == [1, 2, 4, 8, 16, 32, 48, 64, 80, 96] and graphs.captured == 10 * 2
    assert PaddedGraphs("test", compute, lambda rows: Rows(torch.zeros(rows)), 20, [1], capture=False).sizes == [
        *(1, 2, 4, 8, 16, 20)
    ]
    output = graphs.run(Rows(torch.tensor([1.0, 2.0, 3.0])), 3, 2)
    assert output is not None and output.values.tolist() == [2.0, 4.0, 6.0]
    assert seen[-1][0].tolist() == [1.0, 2.0, 3.0, 0.0] and seen[-1][1] == 2  # padded to 4 with zeros
    assert graphs.run(Rows(torch.ones(97)), 97, 1) is None and graphs.run(Rows(torch.ones(3)), 3, 5) is None


def test_a_call_that_may_not_pad_takes_only_a_graph_of_its_own_size() -> None:
    """A step over some of the slots held (live rows below background ones) must not pad into the others."""

    @dataclasses.dataclass
    class Rows:
        values: torch.Tensor

        def first(self, rows: int) -> Rows:
            return Rows(self.values[:rows].clone())

    graphs = PaddedGraphs("test", lambda inputs, key: inputs, lambda rows: Rows(torch.zeros(rows)), 8, [1], False)
    assert graphs.run(Rows(torch.ones(3)), 3, 1, pad=False) is None
    assert graphs.run(Rows(torch.ones(4)), 4, 1, pad=False) is not None
