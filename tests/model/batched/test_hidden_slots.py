"""Hidden slots: each request's hidden state and condition in its slot's row, read as views and moved along."""

from __future__ import annotations

import torch

from serve_app.model.batched.hidden_slots import HiddenRows, HiddenSlots


def _rows(values: list[float]) -> HiddenRows:
    column = torch.tensor(values).view(-1, 1)
    return HiddenRows(column.expand(-1, 3) + 0, column.expand(-1, 3) + 10, column.view(-1, 1, 1).expand(-1, 2, 4) + 0)


def test_a_prefill_writes_its_slots_a_step_reads_views_and_writes_back_and_a_move_carries_a_row() -> None:
    hidden = HiddenSlots(
        slots=4, hidden_size=3, patch_size=2, latent_dim=4, device=torch.device("cpu"), dtype=torch.float32
    )
    hidden.write([2, 0], _rows([5.0, 7.0]))  # two requests prefilled together, into slots 2 and 0
    assert hidden.lm_hidden[:, 0].tolist() == [7.0, 0.0, 5.0, 0.0]
    view = hidden.rows(1, 2)  # a step over slots 1 and 2 reads them in place
    assert view.lm_hidden.data_ptr() == hidden.lm_hidden[1].data_ptr() and view.condition.is_contiguous()
    hidden.write(slice(1, 3), _rows([1.0, 2.0]))  # and writes its outputs back
    assert hidden.residual_hidden[:, 0].tolist() == [17.0, 11.0, 12.0, 0.0]
    hidden.move(2, 0)
    assert hidden.lm_hidden[0].tolist() == [2.0] * 3 and (hidden.condition[0] == 2.0).all()
    hidden.swap(0, 1)
    assert hidden.lm_hidden[:2, 0].tolist() == [1.0, 2.0] and hidden.condition[1].eq(2.0).all()
