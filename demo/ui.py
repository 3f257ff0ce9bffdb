"""Assemble the app from the tabs; the look (theme, CSS) is passed to ``launch`` (Gradio 6).

The Compare cards (``.fc-cards``) are at least 220 px wide and wrap: four in a
row on a wide screen, two by two, or one under the other on a phone; a formula
wider than its card scrolls sideways inside it.
"""
from __future__ import annotations

import gradio as gr

from . import compare_tab, flow_tab, training_tab
from .services import DemoService

TITLE = "flowcore: Flow-DPO"

CSS = """
.fc-cards { flex-wrap: wrap; }
.fc-cards > .fc-column { flex: 1 1 220px; min-width: min(220px, 100%); border-radius: 8px; }
.fc-column code { white-space: pre-wrap; overflow-wrap: anywhere; }
.fc-column .prose { overflow-x: auto; overflow-wrap: break-word; }
.fc-column .katex-display { overflow-x: auto; overflow-y: hidden; max-width: 100%; padding: 2px 0; }
.fc-flow { display: flex; flex-direction: column; gap: 8px; }
.fc-chunk, .fc-node { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px;
  background: var(--background-fill-secondary); }
.fc-chunk-head, .fc-node-head { display: flex; flex-wrap: wrap; gap: 12px; align-items: center;
  font-size: 0.9em; margin-bottom: 4px; }
.fc-node-head { font-weight: 600; }
.fc-tag { font-weight: 600; }
.fc-muted { color: var(--body-text-color-subdued); }
.fc-pyes { display: inline-flex; align-items: center; gap: 6px; }
.fc-bar { display: inline-block; width: 80px; height: 8px; border-radius: 4px; background: var(--border-color-primary);
  overflow: hidden; }
.fc-bar > span { display: block; height: 100%; background: var(--color-accent); }
.fc-text { white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.85em; max-height: 16em;
  overflow-y: auto; }
.fc-end { font-weight: 600; margin: 4px 0; }
.fc-summary { margin: 4px 0 8px 0; }
.fc-label { font-size: 0.85em; margin-top: 6px; }
.fc-rollout, .fc-pair { border-top: 1px dashed var(--border-color-primary); margin-top: 6px; padding-top: 4px; }
.fc-pair-grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.fc-ok { color: #15803d; font-weight: 600; }
.fc-bad { color: #b91c1c; font-weight: 600; }
"""


def build_app(service: DemoService) -> gr.Blocks:
    """The Blocks app over an already-loaded service (tests pass one built on a tiny model)."""
    with gr.Blocks(title=TITLE) as app:
        adapters = "trained" if service.flow_adapters is not None else "untrained"
        sft = len(service.sft_adapters)
        gr.Markdown(f"# {TITLE}\nModel **{service.cfg.model}** on the {service.engine.engine_name} engine · "
                    f"flow adapters: {adapters} · SFT adapters: {sft} of 3 · runs on CPU, so answers take a while.")
        compare_tab.build(service)
        flow_tab.build(service)
        training_tab.build(service)
    # One model is shared: model events run one at a time (concurrency_id "model"); others wait in line.
    app.queue(default_concurrency_limit=1, max_size=64)
    return app


def launch_kwargs() -> dict:
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS, "ssr_mode": False}
