"""The problem picker shared by the Compare and Flow tabs: a test problem, or your own text.

A user's mistake (an empty problem, a problem number out of range) is caught
by the event's ``validator`` before the event starts: Gradio then shows the
message on the input at fault and never marks the outputs "Error" (a callback
that raises leaves a red badge on every output). The server logs it as one
line, without a traceback.
"""
from __future__ import annotations

import gradio as gr

from .services import PROBLEM_SETS, DemoService, InputError

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "\\[", "right": "\\]", "display": True},
         {"left": "\\(", "right": "\\)", "display": False}]


def user_error(service: DemoService, where: str, error: InputError) -> str:
    """Log a user's mistake as one line; returns the message to show."""
    service.log(f"user error in {where}: {error}")
    return str(error)


def _validation(n_inputs: int, at: int, message: str = "") -> list[dict]:
    """One gr.validate per input of the event: ``message`` on input ``at`` (all valid if it is empty)."""
    return [gr.validate(not (message and i == at), message if i == at else "") for i in range(n_inputs)]


class Picker:
    """The widgets; ``inputs`` is what a run callback receives: set, number, question, gold."""

    def __init__(self, service: DemoService, name: str):
        self.service, self.name = service, name
        first = service.pick(next(iter(PROBLEM_SETS)), 0)
        with gr.Row():
            self.problem_set = gr.Radio(list(PROBLEM_SETS), value=next(iter(PROBLEM_SETS)), label="Problem set",
                                        info="Also decides how a typed answer is graded.", scale=2)
            self.index = gr.Number(value=0, precision=0, minimum=0, label="Problem #", scale=1,
                                   info="0-based, e.g. 0-1318 for GSM8K test")
        limit = service.cfg.max_question_tokens
        with gr.Row():
            self.question = gr.Textbox(first.question, lines=4, max_lines=12, label="Problem", scale=4,
                                       info=f"Edit it or type your own problem: the text here is what runs. Over "
                                            f"{limit} tokens, its start and end are kept and the middle is cut.",
                                       elem_id=f"{name}-question")
            self.gold = gr.Textbox(first.gold, label="Gold answer", scale=1,
                                   info="Leave empty to skip grading.")
        self.inputs = [self.problem_set, self.index, self.question, self.gold]

        def check_number(problem_set: str, index):
            try:
                service.pick(problem_set, index)
            except InputError as e:
                return _validation(2, 1, user_error(service, f"{name}: load problem", e))
            return _validation(2, 1)

        def load_problem(problem_set: str, index) -> tuple[str, str]:
            try:
                p = service.pick(problem_set, index)
            except InputError as e:
                raise gr.Error(user_error(service, f"{name}: load problem", e), print_exception=False) from None
            return p.question, p.gold

        gr.on([self.problem_set.change, self.index.submit, self.index.blur], load_problem,
              inputs=[self.problem_set, self.index], outputs=[self.question, self.gold], validator=check_number,
              api_name=f"{name}_load_problem", concurrency_limit=4)

    def check(self, problem_set, index, question, gold, *settings):
        """The validator of a run event (inputs: ``self.inputs`` then the tab's settings)."""
        try:
            self.service.problem(problem_set, index, question, gold)
        except InputError as e:
            return _validation(4 + len(settings), 2, user_error(self.service, self.name, e))
        return _validation(4 + len(settings), 2)

    def problem(self, problem_set, index, question, gold):
        """The service's problem for the run and its notice (shown above the answers); bad input: a UI error."""
        try:
            return self.service.problem(problem_set, index, question, gold)
        except InputError as e:  # the validator let it pass (it should not): still one line, no traceback
            raise gr.Error(user_error(self.service, self.name, e), print_exception=False) from None
