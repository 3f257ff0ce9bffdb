"""Tab 2, Flow: the Answer/Stop flow live, then its rollouts and the DPO pairs they give."""
from __future__ import annotations

import gradio as gr

from . import render
from .problem_picker import Picker, user_error
from .services import PAIR_ROLES, DemoService, InputError


def build(service: DemoService) -> None:
    with gr.Tab("Flow", id="flow"):
        if service.flow_adapters is not None:
            status = f"Flow adapters: trained, from `{service.flow_adapters}`."
        else:
            status = (f"⚠️ **This flow is untrained**: no online-DPO run was found under `{service.cfg.runs_dir}/`, "
                      f"so the Answer and Stop LLMs are both the base model. "
                      f"Train them with `{service.train_command}`.")
        gr.Markdown("The Answer LLM writes a chunk, the Stop LLM reads the partial answer and says Yes (stop) or "
                    "No (go on); repeat. Then, at every node, rollouts sample a different chunk and play the flow "
                    "out: where the outcome differs, the node gives a DPO pair.  \n" + status)
        picker = Picker(service, "flow")
        with gr.Row():
            chunk_size = gr.Slider(8, 160, value=32, step=8, label="Chunk size (tokens)", elem_id="chunk-size",
                                   info="paper: 160")
            max_steps = gr.Slider(1, 12, value=6, step=1, label="Max steps (chunks)", info="paper: 6")
            rollouts = gr.Slider(0, 4, value=1, step=1, label="Rollouts per node", info="paper: 1; 0 = skip")
        with gr.Accordion("More settings", open=False):
            temperature = gr.Slider(0.1, 1.5, value=service.cfg.rollout_temperature, step=0.1,
                                    label="Rollout temperature", info="the flow itself is greedy")
        run = gr.Button("Run the flow", variant="primary", elem_id="run-flow")
        status_md = gr.Markdown(label="Status", elem_id="flow-status")
        chunks = gr.HTML(render.flow_chunks_placeholder(), label="Chunks", elem_id="flow-chunks")
        gr.Markdown("#### Rollouts and DPO pairs")
        pairs = gr.HTML(render.rollouts_placeholder(), label="Rollouts", elem_id="flow-rollouts")

        def run_flow(problem_set, index, question, gold, chunk, steps, n_rollouts, temp):
            problem, notice = picker.problem(problem_set, index, question, gold)
            for view in service.run_flow(problem, chunk, steps, n_rollouts, temp):
                status = render.flow_status(view)
                yield (render.notice(notice) + "  \n" + status if notice else status,
                       render.flow_chunks(view), render.rollouts_html(view))

        with gr.Accordion("Real DPO pairs from a training run", open=False):
            gr.Markdown("The pairs online training made, read from the run's `pairs.jsonl`: the problem, the flow "
                        "they were explored from (its progressive-validation answer) and the chosen and rejected "
                        "sides. Compare them with the pairs of the live flow above.")
            runs = service.runs()
            with gr.Row():
                pair_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2,
                                       info=f"folders under {service.cfg.runs_dir}/")
                pair_role = gr.Radio(list(PAIR_ROLES), value="both", label="Pairs for")
                pair_number = gr.Number(1, precision=0, minimum=1, label="Pair number")
            show_pair = gr.Button("Show the pair")
            pair_html = gr.HTML(label="Pair", elem_id="run-pair")

        def run_pair(name, role, number):
            try:
                return render.run_pair_html(service.run_pair(name, role, number))
            except InputError as e:
                raise gr.Error(user_error(service, "flow: run pair", e), print_exception=False) from None

        def list_runs(selected):  # runs may have been added or removed since the page loaded
            names, value = service.run_choice(selected)
            return gr.Dropdown(choices=names, value=value)

        pair_run.focus(list_runs, pair_run, pair_run, api_name="pair_runs", concurrency_limit=4)
        show_pair.click(run_pair, [pair_run, pair_role, pair_number], pair_html, api_name="run_pair",
                        concurrency_limit=4)
        pair_role.change(lambda name, role: run_pair(name, role, 1), [pair_run, pair_role], pair_html,
                         api_visibility="private").then(lambda: 1, None, pair_number, api_visibility="private")

        run.click(run_flow, [*picker.inputs, chunk_size, max_steps, rollouts, temperature], [status_md, chunks, pairs],
                  validator=picker.check, api_name="flow", concurrency_id="model")
