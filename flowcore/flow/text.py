"""What every flow engine keeps, whatever runs the model: the tokenizer and settings, the Yes/No and
end-of-turn ids, the prompts as token ids, and the counters (``ModelCalls`` on transformers and
``VLLMFlowEngine`` on vLLM both start from here)."""
from __future__ import annotations

import collections
import copy

from flowcore import prompts
from flowcore.data import Problem
from flowcore.flow.state import FlowConfig, FlowState


class FlowText:
    """The text side of a flow engine (no model here)."""

    def _init_flow(self, tokenizer, config: FlowConfig | None, gen_eos: list[int | None]) -> None:
        """What every engine keeps: the tokenizer, the settings, the Yes/No and end-of-turn ids (the
        tokenizer's eos and the generation config's), the prompts' token ids, and the counters."""
        self.tok = tokenizer
        self.cfg = config or FlowConfig()
        self.yes_id, self.no_id = prompts.yes_no_ids(tokenizer)
        self.eos_ids = sorted({i for i in [tokenizer.eos_token_id, *gen_eos] if i is not None})
        self._prompt_ids: dict[str, list[int]] = {}
        # generated_tokens, {answer,stop}_calls, {answer,stop}_seconds, seconds,
        # decoded_row_tokens (rows x new positions of each generate call: a row that has ended still
        # decodes until its batch's longest chunk is done, so generated_tokens / this is the batch's use),
        # stop_tokens (Stop prompt tokens asked about)
        self.stats = collections.Counter()

    def configured(self, config: FlowConfig) -> "FlowText":
        """This engine (the same loaded model and adapters) under other flow settings, with its own counters."""
        other = copy.copy(self)
        other.cfg, other.stats = config, collections.Counter()
        return other

    def sampler_state(self) -> dict:
        """What sampling draws from besides torch's generators (checkpointed by online training): none here."""
        return {}

    def set_sampler_state(self, state: dict) -> None:
        pass

    def sync_adapters(self, peft_model) -> None:
        """Serve ``peft_model``'s adapters as they are now (online training, after DPO steps). This engine runs
        that very model, so there is nothing to do; an engine with its own copy of the weights reloads them."""

    def new_round(self) -> None:
        """Online training starts a round: nothing carried over from earlier rounds may change its flows."""

    def prompt_ids(self, problem: Problem) -> list[int]:
        key = problem.question
        if key not in self._prompt_ids:
            text = prompts.answer_prompt(self.tok, problem.question)
            self._prompt_ids[key] = self.tok(text, add_special_tokens=False).input_ids
        return self._prompt_ids[key]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def completion(self, state: FlowState) -> str:
        return self.decode(state.answer_ids())

    def stop_prompt_ids(self, problem: Problem, answer_ids: list[int]) -> list[int]:
        """Token ids of the Stop LLM's prompt about a partial answer (re-tokenised text)."""
        text = prompts.stop_prompt(self.tok, problem.question, self.decode(answer_ids))
        return self.tok(text, add_special_tokens=False).input_ids
