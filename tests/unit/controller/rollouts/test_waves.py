import pytest

from edgefleet.controller.rollouts.waves import WaveSpecError, parse_waves


@pytest.mark.parametrize(
    ("spec", "size", "plan"),
    [
        ("1,10%,50%,100%", 100, [1, 10, 50, 100]),
        ("1,10%,50%,100%", 3, [1, 2, 3]),
        ("1,10%,50%,100%", 1, [1]),
        ("1,10%", 20, [1, 2, 20]),  # a final wave covers the fleet
        ("100%", 7, [7]),
        ("5,2,10", 8, [5, 8]),  # counts are cumulative: smaller ones add nobody
        ("1", 0, []),
    ],
)
def test_wave_plans(spec, size, plan):
    assert parse_waves(spec, size) == plan


@pytest.mark.parametrize("spec", ["0", "-1", "0%", "101%", "x", "1,,2", "10 %x"])
def test_bad_wave_specs(spec):
    with pytest.raises(WaveSpecError):
        parse_waves(spec, 10)
