from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from traitlens.atomic import TEMP_SUFFIX, NpyStream


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_streamed_npy_has_the_bytes_of_np_save(tmp_path: Path, dtype: type) -> None:
    array_nd = np.random.default_rng(0).standard_normal((37, 5)).astype(dtype)
    stream = NpyStream(tmp_path / "a.npy", 37, 5, array_nd.dtype)
    for block in np.array_split(array_nd, 4):
        stream.append(block)
    assert not (tmp_path / "a.npy").exists()  # nothing in place before the commit
    stream.commit()
    expected = io.BytesIO()
    np.save(expected, array_nd, allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.npy"]


def test_a_streamed_npy_refuses_rows_off_plan_and_leaves_nothing_when_abandoned(tmp_path: Path) -> None:
    stream = NpyStream(tmp_path / "a.npy", 4, 3, np.dtype(np.float16))
    with pytest.raises(ValueError, match="do not fit"):
        stream.append(np.zeros((2, 3), dtype=np.float32))
    stream.append(np.zeros((3, 3), dtype=np.float16))
    with pytest.raises(ValueError, match="more than the 4 planned"):
        stream.append(np.zeros((2, 3), dtype=np.float16))
    with pytest.raises(ValueError, match="3 rows written of the 4 planned"):
        stream.commit()
    stream.abandon()
    assert not any(path.name.endswith(TEMP_SUFFIX) or path.name == "a.npy" for path in tmp_path.iterdir())
