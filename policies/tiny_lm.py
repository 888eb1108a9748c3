"""The tiny world's language models: a word-level tokenizer and small Llama models, built in code.

Every tiny model (pool rungs, and later the router's policies) shares one word-level vocabulary, so a
prompt means the same token ids to all of them. A prompt is a question followed by ` =`; the model
continues with the answer and an end-of-sequence token.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.prompts import SEP

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIALS = [PAD, BOS, EOS, UNK]
# words of the router's own prompts and outputs: step separators, references to earlier answers, and
# one token per pool tier (the allocator names a tier; the pool maps tiers to model ids)
STEP_SEP = "|"
PREVIOUS = "#"  # the previous step's answer, in the tiny decomposer's writing (policies.parsers.relative_refs)
ROUTER_WORDS = ["decompose", "allocate", STEP_SEP, PREVIOUS, "#1", "#2", "#3", "#4", "#5", "#6"]
MODEL_SLOTS = [f"<m{i}>" for i in range(8)]



def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `words` (plus specials and the separator); prepends [BOS] to inputs."""
    vocab: dict[str, int] = {}
    for w in [*SPECIALS, SEP, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int, intermediate: int,
    max_positions: int = 128, seed: int = 0,
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5,
    )
    return LlamaForCausalLM(cfg)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save(model, tokenizer, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
