"""Compile (FLOW-DPO.md section 3): traces from three sources -> SFT of the base model -> the paper's table.

Data path: ``traces`` (ground truth, self-generated, Flow-generated) -> ``sft`` (LoRA SFT) ->
``reproduce`` (``python -m flowcore reproduce``: the ``presets`` run through the ``pipeline``'s stages)."""
