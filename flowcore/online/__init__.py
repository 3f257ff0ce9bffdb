"""Online Flow-DPO (FLOW-DPO.md section 2): rollouts find preference pairs, DPO steps both adapters.

Data path: ``rollouts`` (pairs from a flow) -> ``dpo`` (the loss and the optimizer) -> ``train`` (the online
loop, progressive validation) -> ``baselines`` (untrained flow and zero-shot on the same examples) ->
``plots`` / ``diagnostics`` / ``sweep`` (reading a run's files)."""
