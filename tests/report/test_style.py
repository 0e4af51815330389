"""The shared style: Agg backend, and log2 tick labels that never collide."""

import matplotlib
import matplotlib.pyplot as plt

from mitosis_cli.report import style


def test_backend_is_non_interactive() -> None:
    assert matplotlib.get_backend().lower() == "agg"


def test_power_of_two_ticks_prefer_powers_and_leave_room() -> None:
    fig, ax = plt.subplots()
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, [1, 2, 3])
    assert list(ax.get_xticks()) == [1, 2, 3]  # 3 has room when 4 is not there
    style.power_of_two_ticks(ax.xaxis, [32, 64, 96, 128])
    assert list(ax.get_xticks()) == [32, 64, 128]  # 96 would sit on 128
    plt.close(fig)
