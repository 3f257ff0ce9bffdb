"""Evaluation: ``evaluate`` (per-problem files, intervals, paired tests) and the lm-eval bridge
(``lm_eval_tasks`` for the ``flow_gsm8k``/``flow_math`` tasks, ``lm_eval_model`` the ``flow`` model,
``lm_eval_cli`` the ``python -m flowcore lm-eval`` entry point)."""
