"""The fvcore count's own pieces; its agreement with the analytic count is tested in test_flops."""

import pytest

from mdlm import fvcore_count
from mdlm.errors import UserError


def test_sdpa_handle_formula():
    class Shape:  # stands in for a JIT value with a complete tensor type
        def __init__(self, shape):
            self.shape = shape

        def isCompleteTensor(self):
            return True

        def type(self):
            return self

        def sizes(self):
            return self.shape

    q, k, v = Shape([2, 3, 5, 8]), Shape([2, 3, 7, 8]), Shape([2, 3, 7, 4])
    assert fvcore_count._sdpa_macs([q, k, v], []) == 2 * 3 * 5 * 7 * (8 + 4)


def test_select_mask_spreads_positions_and_rejects_bad_shapes():
    mask = fvcore_count.select_mask(3, 8, 5)
    assert mask.shape == (3, 8) and int(mask.sum()) == 5 and bool(mask.any(dim=1).all())
    assert int(fvcore_count.select_mask(2, 7, 14).sum()) == 14  # L divisible by the stride: still exact
    with pytest.raises(UserError, match="17 positions do not fit a \\[2, 8\\] batch"):
        fvcore_count.select_mask(2, 8, 17)
