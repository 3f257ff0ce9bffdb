"""The Flow (FLOW-DPO.md section 1): the Answer LLM writes a chunk, the Stop LLM says Yes/No, repeat.

``engine`` runs flows in batches; ``generate`` is the ``python -m flowcore generate`` command."""
