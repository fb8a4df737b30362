import math

import pytest
import torch

from bayesprune.diagnostics.calibration import expected_calibration_error, reliability_bins

PROBS = torch.tensor(
    [[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.58, 0.42], [0.30, 0.70], [0.75, 0.25]]
)
Y = torch.tensor([0, 1, 0, 1, 1, 0])


def test_ece_matches_a_hand_computation():
    # 15 bins of width 1/15: 0.95 -> bin 14, 0.92 -> 13, 0.55 and 0.58 -> 8, 0.70 -> 10, 0.75 -> 11
    # arg-max right: yes, no, yes, no, yes, yes
    by_hand = (
        abs(1 - 0.95)
        + abs(0 - 0.92)
        + 2 * abs(0.5 - (0.55 + 0.58) / 2)
        + abs(1 - 0.70)
        + abs(1 - 0.75)
    ) / 6
    assert expected_calibration_error(PROBS, Y) == pytest.approx(by_hand, abs=1e-6)


def test_reliability_bins_by_hand():
    bins = reliability_bins(PROBS, Y)
    assert bins["count"].tolist() == [0] * 8 + [2, 0, 1, 1, 0, 1, 1]
    assert bins["accuracy"][8].item() == 0.5
    assert bins["confidence"][8].item() == pytest.approx((0.55 + 0.58) / 2, abs=1e-6)
    assert math.isnan(bins["accuracy"][0].item()) and math.isnan(bins["confidence"][9].item())
    assert bins["bin_lower"][1].item() == pytest.approx(1 / 15)
    assert bins["bin_upper"][-1].item() == 1.0


def test_confident_and_right_is_calibrated():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == 0.0
    assert expected_calibration_error(probs, torch.tensor([1, 0])) == 1.0


@pytest.mark.parametrize(
    "probs, y, match",
    [
        (torch.ones(3), torch.zeros(3, dtype=torch.long), "probs"),
        (torch.ones(3, 2) / 2, torch.zeros(4, dtype=torch.long), "y"),
    ],
)
def test_bad_inputs_name_the_argument(probs, y, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, y)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(torch.ones(3, 2) / 2, torch.zeros(3, dtype=torch.long), n_bins=0)
