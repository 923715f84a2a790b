"""bdsel.table: a table's entries as a run reads them (LabelColumn, O(N)) against the whole
table, and the cache read by column, chunk by chunk."""

from __future__ import annotations

import pytest
import torch
from test_library import N_CLASSES, _Linear, _user_data
from torch.utils.data import TensorDataset

import bdsel
import bdsel.cache.format as cache_format
from bdsel.cache.format import load_label_logprobs, load_zs_logprobs
from bdsel.table import LabelColumn, ZeroShotTable, as_lookup


def _table(n: int = 50, c: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(3 * torch.randn(n, c, generator=g), dim=1)
    return logprobs, torch.randint(0, c, (n,), generator=g)


def test_a_label_column_gives_the_tables_entries_of_its_labels():
    logprobs, labels = _table()
    table, column = ZeroShotTable._as_given(logprobs, 1.0), LabelColumn.of(logprobs, labels)
    idx = torch.tensor([3, 0, 49, 3, 17])
    assert torch.equal(
        column.label_logprob(idx, labels[idx]), table.label_logprob(idx, labels[idx])
    )
    assert torch.equal(column.top_class(idx), table.top_class(idx))
    assert torch.equal(column.top_class(idx), logprobs[idx].argmax(1))
    assert (column.n_rows, column.n_classes) == (50, 7) and len(column) == 50
    assert as_lookup(column, "zs_logprobs") is column
    assert isinstance(as_lookup(logprobs, "zs_logprobs"), ZeroShotTable)


def test_a_label_column_refuses_other_labels_on_the_cpu():
    logprobs, labels = _table()
    column = LabelColumn.of(logprobs, labels)
    idx = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="not the observed labels"):
        column.label_logprob(idx, (labels[idx] + 1) % 7)


def test_a_label_column_holds_three_values_a_row():
    logprobs, labels = _table(n=40, c=100)
    column = LabelColumn.of(logprobs, labels)
    held = [column.logprob, column.top, column.labels]
    assert sum(t.numel() for t in held) == 3 * 40  # not 40 * 100
    with pytest.raises(ValueError, match="three \\[N\\] tensors"):
        LabelColumn(column.logprob, column.top[:3], column.labels, 100)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_cache_read_by_column_streams_and_gives_the_same_entries(
    tmp_path, monkeypatch: pytest.MonkeyPatch, temperature: float
):
    x, y = _user_data()
    path = tmp_path / "mine.h5"
    names = [f"c{i}" for i in range(N_CLASSES)]
    bdsel.write_zeroshot_cache(path, _Linear(36), TensorDataset(x, y), labels=y,
                               class_names=names, batch_size=16, progress=False)  # fmt: skip
    full = load_zs_logprobs(path, None, temperature=temperature)
    reads: list[int] = []
    real = cache_format._read_chunk

    def spy(rows, where, *args):
        out = real(rows, where, *args)
        reads.append(out.shape[0])
        return out

    monkeypatch.setattr(cache_format, "READ_ROWS", 16)
    monkeypatch.setattr(cache_format, "_read_chunk", spy)
    logprob, top = load_label_logprobs(path, None, y, temperature=temperature)
    assert reads == [16, 16, 16, 16, 6]  # 70 rows, never more than a chunk in memory
    assert torch.equal(logprob, full.gather(1, y[:, None]).squeeze(1))
    assert torch.equal(top, full.argmax(1))
    with pytest.raises(ValueError, match="69 labels for 70 rows"):
        load_label_logprobs(path, None, y[:-1])
