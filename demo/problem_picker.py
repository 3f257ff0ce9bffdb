"""The problem picker shared by the Compare and Flow tabs: a test problem, or your own text."""
from __future__ import annotations

import gradio as gr

from .services import PROBLEM_SETS, DemoService, InputError

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "\\[", "right": "\\]", "display": True},
         {"left": "\\(", "right": "\\)", "display": False}]


class Picker:
    """The widgets; ``inputs`` is what a run callback receives: set, number, question, gold."""

    def __init__(self, service: DemoService, name: str):
        first = service.pick(next(iter(PROBLEM_SETS)), 0)
        with gr.Row():
            self.problem_set = gr.Radio(list(PROBLEM_SETS), value=next(iter(PROBLEM_SETS)), label="Problem set",
                                        info="Also decides how a typed answer is graded.", scale=2)
            self.index = gr.Number(value=0, precision=0, minimum=0, label="Problem #", scale=1,
                                   info="0-based, e.g. 0-1318 for GSM8K test")
        with gr.Row():
            self.question = gr.Textbox(first.question, lines=4, max_lines=12, label="Problem", scale=4,
                                       info="Edit it or type your own problem: the text here is what runs.",
                                       elem_id=f"{name}-question")
            self.gold = gr.Textbox(first.gold, label="Gold answer", scale=1,
                                   info="Leave empty to skip grading.")
        self.inputs = [self.problem_set, self.index, self.question, self.gold]

        def load_problem(problem_set: str, index) -> tuple[str, str]:
            try:
                p = service.pick(problem_set, index)
            except InputError as e:
                raise gr.Error(str(e)) from None
            return p.question, p.gold

        gr.on([self.problem_set.change, self.index.submit, self.index.blur], load_problem,
              inputs=[self.problem_set, self.index], outputs=[self.question, self.gold],
              api_name=f"{name}_load_problem", concurrency_limit=4)


def problem_or_error(service: DemoService, problem_set, index, question, gold):
    """The service's problem for the run and its notice (shown above the answers); bad input: a UI error."""
    try:
        return service.problem(problem_set, index, question, gold)
    except InputError as e:
        raise gr.Error(str(e)) from None
