"""transformers backend: batched generation with left padding; greedy or sampled; raw-model logprobs.
With `chat: true` in the pool entry each prompt is sent as one user turn of the tokenizer's chat template."""
from __future__ import annotations

import time

from actors.backends.base import Backend, register_backend
from core.types import Completion, SamplingParams, Usage


@register_backend("hf")
class HFBackend(Backend):
    def __init__(self, model_id: str, spec: dict):
        super().__init__(model_id, spec)
        import torch  # lazy: backends import their engine only when they load a model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        path = spec["path"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        # an instruct model: each prompt becomes one user turn of its chat template
        self.chat = bool(spec.get("chat")) and bool(getattr(self.tokenizer, "chat_template", None))
        if spec.get("chat") and not self.chat:
            raise ValueError(f"{model_id}: chat is set but the tokenizer at {path} has no chat template")

    def render(self, prompt: str) -> str:
        """The text the model reads for `prompt` (what prompt_tokens count)."""
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        torch = self.torch
        start = time.perf_counter()
        enc = self.tokenizer([self.render(p) for p in prompts], return_tensors="pt", padding=True)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = not params.greedy
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=params.max_new_tokens, do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None, top_k=None,
                output_logits=True, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out.sequences[:, enc.input_ids.shape[1]:]
        # temperature-1 logprobs of the chosen tokens, from the raw logits (gathered where they are)
        logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        chosen = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1).cpu()
        new = new.cpu()
        latency = time.perf_counter() - start
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        results = []
        for i, prompt_mask in enumerate(enc.attention_mask.cpu()):
            ids = new[i].tolist()
            finish = "length"
            if eos in ids:
                ids = ids[: ids.index(eos) + 1]
                finish = "stop"
            elif pad != eos:
                ids = [t for t in ids if t != pad]
            n = len(ids)
            results.append(Completion(
                text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                token_ids=ids, token_logprobs=chosen[i, :n].tolist(),
                usage=Usage(prompt_tokens=int(prompt_mask.sum()), completion_tokens=n),
                latency_s=latency, model_id=self.model_id, finish_reason=finish,
                compute_s=latency / len(prompts),  # the batch ran together: each pays its share
            ))
        return results
