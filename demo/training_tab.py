"""Tab 3, Training: progressive accuracy of the online-DPO runs and the results table beside the paper's."""
from __future__ import annotations

import gradio as gr

from . import render
from .services import DemoService


def build(service: DemoService) -> None:
    with gr.Tab("Training", id="training"):
        gr.Markdown("Progressive validation accuracy of an online Flow-DPO run (each example is answered before "
                    "the model trains on it), with the untrained flow and the zero-shot model on the same "
                    "examples. Everything here is read from the files in `runs/` and `results/`.")
        runs = service.runs()
        with gr.Row():
            run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=3,
                              info=f"folders under {service.cfg.runs_dir}/")
            refresh = gr.Button("Reload files", scale=1)
        first = service.progressive(runs[0] if runs else None)
        message = gr.Markdown(render.notice(first.message), label="Chart notice")
        plot = gr.Plot(render.app_figure(first.figure), label="Progressive accuracy", elem_id="progressive-plot")
        gr.Markdown("#### Held-out evaluation of the run: trained flow, untrained flow, zero-shot")
        heldout = gr.Markdown(heldout_markdown(service, runs[0] if runs else None), elem_id="heldout-table")
        gr.Markdown("#### Results table: ours and the paper's")
        ours = gr.Markdown(label="Our results", value=render.results_tables(service.results_tables(),
                                                                            service.cfg.results_root))
        gr.Markdown(render.paper_table())

        def progressive(name):
            fig = service.progressive(name)
            return render.app_figure(fig.figure), render.notice(fig.message), heldout_markdown(service, name)

        def reload_files(selected):
            names, value = service.run_choice(selected)  # runs may have been added or removed since the page loaded
            return (gr.Dropdown(choices=names, value=value),
                    render.results_tables(service.results_tables(), service.cfg.results_root))

        run.change(progressive, run, [plot, message, heldout], api_name="progressive", concurrency_limit=4)
        refresh.click(reload_files, run, [run, ours], api_name="reload_files", concurrency_limit=4).then(
            progressive, run, [plot, message, heldout], api_visibility="private")


def heldout_markdown(service: DemoService, run: str | None) -> str:
    return render.heldout_tables(*service.heldout(run))
