"""What a read model may declare."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from projections.base import Projection


class Row(NamedTuple):
    key: str
    seen: int


def test_often_changed_must_name_columns_other_than_the_key() -> None:
    for wrong in (("sen",), ("key",)):
        with pytest.raises(ValueError, match="often_changed names no column"):
            Projection(
                "rows",
                Row,
                key_of=lambda e: None,
                apply=lambda s, e: Row("k", 1),
                often_changed=wrong,
            )
