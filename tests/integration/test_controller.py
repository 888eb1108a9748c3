"""The façade a user calls with a plain query: it owns its pool, infers the task through the registry,
and runs the one chain; a query without a gold answer is routed, not scored."""
import math

import pytest

pytestmark = pytest.mark.integration


def test_route_plain_strings_with_and_without_gold(zoo_config, ray_local):
    from pipelines.controller import Router

    with Router(zoo_config) as router:
        scan = router.route("jump twice after walk left")
        assert scan.task == "scan" and scan.gold == "I_TURN_LEFT I_WALK I_JUMP I_JUMP"
        assert [s.text for s in scan.steps] == ["walk left", "jump twice"]  # gold steps: untrained router
        plain = router.route("mentor of somebody nobody knows")  # no task parses it: no gold answer
        assert plain.task == "facts" and plain.gold is None and math.isnan(plain.correct)
        assert plain.answer == plain.steps[-1].answer and plain.cost_usd > 0
        with pytest.raises(ValueError, match="unknown task"):
            router.route("walk", task="nope")
    with pytest.raises(RuntimeError, match="inside `with"):
        router.route("walk")
