"""Prompts of the chain for natural-language tasks (CSQA, MuSiQue, math, ...): a mixin for a `Task`.

A step's prompt shows the original question, the sub-questions answered so far with their answers,
then the current sub-question (its `#k` references filled with earlier answers), and asks for a short
answer. The final call's prompt shows the question and every sub-question with its answer, and asks
for the final answer in the task's format (`answer_instruction`). Prompts are plain text; a pool
model that is an instruct model gets them through its chat template (pool entry `chat: true`).
"""
from __future__ import annotations

from typing import ClassVar

from benchmarks.tasks.base import Example, Task, render_step

STEP_MARK = "Sub-question to answer now:"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class NaturalLanguageTask(Task):
    """Mix in before the task's own class body: `class CsqaTask(NaturalLanguageTask): ...`."""

    step_max_tokens: ClassVar[int] = 48
    # how the final call is asked to answer, in the task's answer format
    answer_instruction: ClassVar[str] = "Give the final answer only, in a few words."
    step_instruction: ClassVar[str] = "Answer the sub-question in one short sentence."

    def question_text(self, example: Example) -> str:
        """The question as a pool model sees it (default: the query, e.g. a stem with its choices)."""
        return example.query

    def _qa_lines(self, steps: list[str], answers: list[str]) -> list[str]:
        lines = []
        for i, (s, a) in enumerate(zip(steps, answers), 1):
            lines.append(f"{i}. {_one_line(render_step(s, answers[: i - 1]))}")
            lines.append(f"   Answer: {_one_line(a) or '(no answer)'}")
        return lines

    def step_prompt(self, example: Example, step_text: str, earlier: list[str],
                    earlier_steps: list[str] | None = None) -> str:
        parts = [f"Question: {self.question_text(example).strip()}"]
        if earlier:
            if earlier_steps is not None and len(earlier_steps) == len(earlier):
                parts.append("Sub-questions answered so far:\n" + "\n".join(self._qa_lines(earlier_steps, earlier)))
            else:  # the chain did not say which sub-questions these answer
                parts.append("Answers so far:\n" + "\n".join(
                    f"{i}. {_one_line(a) or '(no answer)'}" for i, a in enumerate(earlier, 1)))
        parts.append(f"{STEP_MARK} {_one_line(render_step(step_text, earlier))}\n{self.step_instruction}")
        return "\n\n".join(parts)

    def final_prompt(self, example: Example, steps: list[str], answers: list[str]) -> str | None:
        """`steps` are the sub-questions as the decomposer wrote them (a step's full prompt is also
        accepted: its sub-question is read back from it)."""
        subs = [s.rsplit(STEP_MARK, 1)[1].split("\n", 1)[0] if STEP_MARK in s else s for s in steps]
        parts = [f"Question: {self.question_text(example).strip()}"]
        if subs:
            parts.append("Sub-questions and their answers:\n" + "\n".join(self._qa_lines(subs, answers)))
        parts.append(self.answer_instruction)
        return "\n\n".join(parts)
