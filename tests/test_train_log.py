"""Each step is logged once: to the history file always, to a resumed W&B run only past its last step."""
import io
import json

from pipelines.train import record_step


class FakeRun:  # the two members of a wandb Run that logging uses
    def __init__(self, step: int):
        self.step, self.logged = step, []

    def log(self, data: dict, step: int) -> None:
        assert step >= self.step, "W&B drops a step below its current one"
        self.logged.append(step)
        self.step = step + 1


def test_a_resumed_wandb_run_gets_only_the_steps_it_lacks():
    run, log = FakeRun(step=5), io.StringIO()  # W&B held steps 0-4 when the driver was killed
    for step in range(3, 8):  # the replay from the checkpoint at step 3
        record_step(log, run, {"step": step, "phase": "allocator", "reward": 0.5})
    assert run.logged == [5, 6, 7]
    assert [json.loads(x)["step"] for x in log.getvalue().splitlines()] == [3, 4, 5, 6, 7]


def test_without_wandb_only_the_history_is_written():
    log = io.StringIO()
    record_step(log, None, {"step": 0, "phase": "decomposer"})
    assert json.loads(log.getvalue()) == {"step": 0, "phase": "decomposer"}
