"""Shared fixtures: a tiny random model built in the test (seconds), and the smallest real model.

``tiny`` needs nothing from disk or network: a byte-level BPE tokenizer trained
here on a few sentences (ChatML template, like Qwen/SmolLM2) and a random
2-layer Llama. ``smol`` is the embedded ``smollm2-135m-instruct`` through the
real fetch/convert/load path (tests using it are marked ``integration``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# dtype "auto" is bf16 on CPUs with AVX512-BF16 and fp32 elsewhere; the tiny models' taught behaviour (and the
# exact numbers some tests compare) hold in fp32, so every test and subprocess runs fp32 on every machine
os.environ.setdefault("FLOWCORE_DTYPE", "float32")
# --engine auto is vLLM where it is installed; only the tests written for vLLM (tests/test_vllm.py, which name
# the engine) start it: everything else runs the transformers engine, in-process and on the tiny models
os.environ.setdefault("FLOWCORE_ENGINE", "hf")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Yes No Yes No. The answer is 42. Step 1: add 3 and 4 to get 7.",
    "Janet has 16 eggs and eats 3, so she has 13 left. The final answer is \\boxed{13}.",
    "You are a helpful math assistant. Please explain your reasoning, then answer the question.",
    "Question: Candidate solution: Is the candidate solution complete and correct? Answer only Yes or No.",
    "Put your final answer within \\boxed{}. 0123456789 + - * / = $ , . ( ) { } \\frac{1}{2}",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None)
    tok.chat_template = CHATML
    tok.padding_side = "left"
    return tok


def build_tiny_model(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny(tiny_tokenizer):
    """(model, tokenizer): a fresh random 2-layer Llama per test (so tests can mutate it)."""
    return build_tiny_model(tiny_tokenizer), tiny_tokenizer


@pytest.fixture
def one_thread():
    """One torch thread: a tiny model runs much faster so, above all when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the real smallest embedded model (fetch + convert on first use)."""
    from flowcore import models

    return models.load(models.TEST_MODEL)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: uses the real smollm2-135m-instruct model")
    config.addinivalue_line("markers", "browser: drives Debian chromium with Playwright")
