"""Every prompt the project sends to a model, in one place (flow, zero-shot, SFT, lm-eval, app).

Answer LLM: the paper's system prompt; the user turn is the problem followed by
a final-answer instruction (ours: the grader's extraction is anchored on
``\\boxed{}``, so we ask for it); the assistant turn holds the partial answer and
is left open, so generation continues it.

Stop LLM: the paper's prompt (FLOW-DPO.md section 1); its decision is read from
the first-token logits of "Yes" vs "No".
"""
from __future__ import annotations

ANSWER_SYSTEM = "You are a helpful math assistant. Please explain your reasoning, then answer the question."
ANSWER_FORMAT = "Put your final answer within \\boxed{}."  # (ours)
STOP_SYSTEM = "You answer only Yes or No."
STOP_USER = (
    "Question: {question}\nCandidate solution:\n{partial}\n"
    "Is the candidate solution complete and correct? Answer only Yes or No."
)


def answer_messages(question: str) -> list[dict]:
    return [
        {"role": "system", "content": ANSWER_SYSTEM},
        {"role": "user", "content": f"{question}\n\n{ANSWER_FORMAT}"},
    ]


def stop_messages(question: str, partial: str) -> list[dict]:
    return [
        {"role": "system", "content": STOP_SYSTEM},
        {"role": "user", "content": STOP_USER.format(question=question, partial=partial)},
    ]


def render(tokenizer, messages: list[dict]) -> str:
    """Chat-template text ending with an open assistant turn."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_prompt(tokenizer, question: str) -> str:
    return render(tokenizer, answer_messages(question))


def stop_prompt(tokenizer, question: str, partial: str) -> str:
    return render(tokenizer, stop_messages(question, partial))


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """First token ids of the Stop LLM's two answers."""
    yes = tokenizer.encode("Yes", add_special_tokens=False)
    no = tokenizer.encode("No", add_special_tokens=False)
    if not yes or not no or yes[0] == no[0]:
        raise ValueError("tokenizer cannot tell 'Yes' from 'No' by their first token")
    return yes[0], no[0]
