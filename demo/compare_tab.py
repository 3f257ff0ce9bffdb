"""Tab 1, Compare: 0-shot and the three SFT models answer one problem side by side."""
from __future__ import annotations

import gradio as gr

from . import render
from .problem_picker import LATEX, Picker
from .services import COLUMNS, REPRODUCE_CMD, DemoService


def build(service: DemoService) -> None:
    with gr.Tab("Compare", id="compare"):
        missing = [COLUMNS[k] for k in service.sft_missing]
        intro = ("The base model without adapters (0-shot) and the three SFT-compiled models of the paper's "
                 "Table 1 answer the same problem, greedily, streamed chunk by chunk; each answer is graded "
                 "against the gold answer.")
        if missing:
            intro += (f"  \n⚠️ Not compiled yet: {', '.join(missing)} — make them with `{REPRODUCE_CMD}` "
                      f"(looked in `{service.cfg.results_dir}/sft/`).")
        gr.Markdown(intro)
        picker = Picker(service, "compare")
        with gr.Row():
            max_tokens = gr.Slider(8, 1024, value=service.cfg.compare_max_tokens, step=8,
                                   label="Answer length (max new tokens)", scale=3,
                                   info="each answer stops at exactly this many tokens, if it has not ended before")
            run = gr.Button("Answer with all four models", variant="primary", scale=1)
        note = gr.Markdown(label="Notice", elem_id="compare-note")
        # the cards wrap onto new lines when the screen is narrow (CSS .fc-cards in ui.py)
        with gr.Row(equal_height=False, elem_classes="fc-cards"):
            columns = [gr.Markdown(f"### {label}", label=label, latex_delimiters=LATEX, elem_classes="fc-column",
                                   min_height=120, container=True, padding=True)
                       for label in COLUMNS.values()]

        def compare(problem_set, index, question, gold, length):
            problem, notice = picker.problem(problem_set, index, question, gold)
            for answers in service.compare(problem, length):
                yield render.notice(notice), *[render.answer_column(a) for a in answers]

        run.click(compare, [*picker.inputs, max_tokens], [note, *columns], validator=picker.check,
                  api_name="compare", concurrency_id="model")
