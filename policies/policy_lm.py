"""`PolicyLM`: a transformers causal LM as a router policy: sample completions with their per-token
logprobs (optionally restricted to allowed tokens), score given completions (for GRPO), save and load.
Tiny policies are built from the tiny world's tokenizer; at scale any HF folder or id (e.g. a Qwen2.5
instruct model) loads the same way, with optional LoRA adapters (peft)."""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import LoraConfig
from policies import positions


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # the sampling distribution's logprobs of the sampled tokens


def decode_sample(tokenizer, token_ids: list[int], logprobs: list[float]) -> Sample:
    """A sampled completion as a `Sample`: its text leaves out EOS and special tokens."""
    eos = tokenizer.eos_token_id
    return Sample(tokenizer.decode([t for t in token_ids if t != eos], skip_special_tokens=True).strip(),
                  list(token_ids), list(logprobs))


def summed_logprobs(lm, prompts: list[str], candidates: list[list[int]]) -> torch.Tensor:
    """[len(prompts), len(candidates)]: each candidate's summed log-probability after each prompt, from
    `lm.token_logprobs` of every prompt + candidate sequence (any policy with `PolicyLM`'s interface)."""
    lps = lm.token_logprobs([p for p in prompts for _ in candidates], [c for _ in prompts for c in candidates])
    return torch.stack([lp.sum() for lp in lps]).view(len(prompts), len(candidates))


PROMPT_CACHE = 200_000  # prompts whose token ids a PolicyLM remembers (then it starts afresh)


@dataclass
class Encoded:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class PolicyLM:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self._token_ids: dict[str, list[int]] = {}
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, lora: LoraConfig | None = None, device: str | None = None) -> PolicyLM:
        """Loads on `device` (default: the GPU when there is one, else the CPU), with the length
        extrapolation its config records (`policies.positions`); with `lora`, wrapped in fresh LoRA
        adapters (only they train)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy, only to load

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
        positions.install(model)  # length extrapolation, when SFT recorded it in the config
        if lora:
            from peft import LoraConfig as PeftLoraConfig  # lazy: optional (LoRA adapters)
            from peft import get_peft_model

            model = get_peft_model(model, PeftLoraConfig(task_type="CAUSAL_LM", **lora.peft_kwargs()))
        return cls(model, AutoTokenizer.from_pretrained(str(path)))

    def save(self, path: str | Path) -> None:
        """A plain HF folder: LoRA adapters, if any, are merged into a copy of the weights."""
        Path(path).mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # a PEFT model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Each prompt's token ids, tokenized once and remembered."""
        cache = self._token_ids
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            if len(cache) + len(missing) > PROMPT_CACHE:
                cache.clear()
            cache.update(zip(missing, self.tokenizer(missing).input_ids))
        return [cache[p] for p in prompts]

    def prompt_lengths(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.prompt_ids(prompts)]

    def encode(self, prompts: list[str]) -> Encoded:
        """The prompts' token ids, left-padded, and their attention mask (as the tokenizer pads a batch).
        Each prompt is tokenized once and remembered: training and sampling read the same prompts again
        (every SFT epoch, every sample of a GRPO group)."""
        rows = self.prompt_ids(prompts)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return Encoded(ids.to(self.device), mask.to(self.device))

    def _mask(self, allowed: list[list[int]] | None, n: int, vocab: int) -> torch.Tensor | None:
        """Additive logit mask [n, vocab]: 0 for each row's allowed ids, -inf elsewhere."""
        if allowed is None:
            return None
        mask = torch.full((n, vocab), float("-inf"), device=self.device)
        for i, ids in enumerate(allowed):
            mask[i, ids] = 0.0
        return mask

    @torch.no_grad()
    def sample(self, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
               allowed: list[list[int]] | None = None, generator: torch.Generator | None = None) -> list[Sample]:
        """One completion per prompt, decoded token by token with a KV cache; temperature 0 = greedy.
        `allowed[i]` restricts every token generated for prompt i to those ids (include EOS to stop)."""
        self.model.eval()
        enc = self.encode(prompts)
        ids, attn = enc.input_ids, enc.attention_mask
        n, prompt_lengths = ids.shape[0], attn.sum(-1)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        past, pos = None, (attn.cumsum(-1) - 1).clamp(min=0)
        vocab_mask = None
        step_ids = ids
        # the KV-cache argument is `cache` in recent transformers, `past_key_values` before
        cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        for _ in range(max_new_tokens):
            with positions.reading(self.model, prompt_lengths):  # as token_logprobs reads the same row
                res = self.model(input_ids=step_ids, attention_mask=attn, position_ids=pos, use_cache=True,
                                 **{cache_kw: past})
            past = getattr(res, cache_kw)
            logits = res.logits[:, -1, :].float()
            if vocab_mask is None and allowed is not None:
                vocab_mask = self._mask(allowed, n, logits.shape[-1])
            if vocab_mask is not None:
                logits = logits + vocab_mask
            if temperature >= 1e-3:
                logp = (logits / temperature).log_softmax(-1)
                # sampled on the CPU with the caller's generator: the same draws on any device
                tok = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(-1).to(logp.device)
            else:
                logp = logits.log_softmax(-1)
                tok = logp.argmax(-1)
            lp = logp.gather(-1, tok[:, None]).squeeze(-1)
            tok_list, lp_list = tok.tolist(), lp.tolist()
            for i in range(n):
                if not done[i]:
                    out_ids[i].append(tok_list[i])
                    out_lp[i].append(lp_list[i])
            done |= tok == self.eos_id
            if bool(done.all()):
                break
            step_ids = tok[:, None]
            attn = torch.cat([attn, torch.ones(n, 1, dtype=attn.dtype, device=attn.device)], dim=1)
            pos = pos[:, -1:] + 1
        return [decode_sample(self.tokenizer, ids_, lps) for ids_, lps in zip(out_ids, out_lp)]

    def candidate_logprobs(self, prompts: list[str], candidates: list[list[int]]) -> torch.Tensor:
        """Differentiable [len(prompts), len(candidates)]: each candidate's summed log-probability after each
        prompt. Candidates of one token each come from one forward per prompt (its next-token distribution)."""
        if all(len(c) == 1 for c in candidates):
            return self.next_token_logprobs(prompts)[:, [c[0] for c in candidates]]
        return summed_logprobs(self, prompts, candidates)

    def next_token_logprobs(self, prompts: list[str]) -> torch.Tensor:
        """Differentiable [len(prompts), vocab] log-probabilities of the token after each prompt."""
        enc = self.encode(prompts)
        pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        with positions.reading(self.model, enc.attention_mask.sum(-1)):
            logits = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos).logits
        return logits[:, -1, :].float().log_softmax(-1)  # prompts are left-padded: the last position is theirs

    def token_logprobs(self, prompts: list[str], completions: list[list[int]],
                       temperature: float = 1.0, allowed: list[list[int]] | None = None) -> list[torch.Tensor]:
        """Differentiable logprobs of the given completion tokens after each prompt (the quantity the
        GRPO ratio and KL use), under the same temperature / restriction the sampler used."""
        enc = self.encode(prompts)
        width = max(len(c) for c in completions)
        pad = self.tokenizer.pad_token_id
        comp = torch.full((len(prompts), width), pad, dtype=torch.long, device=self.device)
        comp_mask = torch.zeros_like(comp)
        for i, c in enumerate(completions):
            comp[i, : len(c)] = torch.tensor(c, dtype=torch.long, device=self.device)
            comp_mask[i, : len(c)] = 1
        ids = torch.cat([enc.input_ids, comp], dim=1)
        mask = torch.cat([enc.attention_mask, comp_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with positions.reading(self.model, enc.attention_mask.sum(-1)):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        p = enc.input_ids.shape[1]
        logits = logits[:, p - 1: p - 1 + width, :]
        if allowed is not None:
            logits = logits + self._mask(allowed, len(prompts), logits.shape[-1])[:, None, :]
        if temperature > 0:
            logits = logits / temperature
        lp = logits.log_softmax(-1).gather(-1, comp[..., None]).squeeze(-1)
        return [lp[i, : len(c)] for i, c in enumerate(completions)]
