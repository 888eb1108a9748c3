"""The demo's closing lines, from a results.json."""
from pipelines.demo import curve_lines


def test_curve_lines_compare_each_router_with_the_base_at_every_knob_value():
    knob = {"name": "tau", "candidates": [0.3, 0.7]}
    results = {"methods": {
        "r2-sft": {"knob": knob, "curve": [[2.0e-6, 0.90], [4.0e-6, 0.99]]},
        "r2": {"knob": knob, "curve": [[1.5e-6, 0.92], [4.0e-6, 0.98]]},
    }}
    [line] = curve_lines(results, ["r2"], "r2-sft")
    assert line == ("r2 vs r2-sft per setting: tau 0.3: accuracy +2.0 pt, pool cost -25.0%; "
                    "tau 0.7: accuracy -1.0 pt, pool cost +0.0%")
    assert curve_lines({"methods": {"r2-sft": {}, "r2": {}}}, ["r2"], "r2-sft") == []  # no knob: nothing to compare
