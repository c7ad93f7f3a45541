"""`IdOrder`: whether a run's entity ids ascend in the order written (a publish then skips its sort)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchml.scoring.pipeline import IdOrder


def ascending(*batches: list[object]) -> bool | None:
    order = IdOrder()
    arrays = [pa.record_batch({"entity_id": pa.array(ids)}) for ids in batches]
    assert list(order.tap(iter(arrays))) == arrays  # passed on unchanged
    return order.ascending


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        ([["a", "b", "b"], [], ["b", "c"]], True),  # equal neighbours and empty batches allowed
        ([["a", "c", "b"]], False),  # inside a batch
        ([["a", "c"], ["b", "d"]], False),  # across batches
        ([["L9"], ["L10"]], False),  # as text, not as numbers: the order the serving table sorts in
        ([[1, 2, 3]], None),  # not strings: the table sorts their text, so unknown
        ([["a", None]], None),
        ([], True),
    ],
)
def test_ids_ascend_only_if_every_neighbouring_pair_does(batches: list[list[object]], expected: bool) -> None:
    assert ascending(*batches) is expected
