"""Local transformers backend: batched sampling with exact token ids and logprobs.

Requests are grouped by sampling settings, sorted by prompt length (less padding), left-padded and
sampled with ``model.generate``. A logits processor records the log-probability of every sampled
token under the sampling distribution (temperature applied; top-p truncation is not renormalised,
matching how the trainer scores tokens).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from codrl.backends.base import Backend, GenRequest, GenResult, SamplingParams
from codrl.errors import CodrlError


class _LogprobRecorder:
    """Logits processor that records log p(sampled token) at every decoding step.

    transformers runs user processors before its temperature/top-p warpers, so the scores seen
    here are raw; the temperature is applied here to score under the sampling distribution.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature if temperature > 0 else 1.0
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """Return [batch, steps] logprobs once generation is over."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
            self.prev = None
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0, device=sequences.device)
        return torch.stack(self.steps, dim=1)


class HFBackend(Backend):
    """A transformers causal LM (optionally wrapped by peft) used in-process.

    The trainer updates ``self.model`` in place, so the next rollout samples from the new weights
    with no copy or sync step.
    """

    token_exact = True

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 32) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        eos: set[int] = set()
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.add(gen_eos)
        elif gen_eos:
            eos.update(int(e) for e in gen_eos)
        if not eos:
            raise ValueError("tokenizer has no end-of-sequence token")
        self.eos_ids = sorted(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                        max_batch_size: int = 32) -> HFBackend:
        """Load a model folder (or the embedded default when ``model`` is None).

        A LoRA checkpoint's ``model/`` folder (a peft adapter: ``adapter_config.json``, no
        ``config.json``) is loaded onto its base model and merged, so trained LoRA checkpoints
        evaluate like full ones.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from codrl.backends.embedded import is_adapter_dir, resolve_model_path

        try:
            if model is not None and is_adapter_dir(model):
                from peft import PeftConfig, PeftModel

                base = PeftConfig.from_pretrained(model).base_model_name_or_path
                base_path = resolve_model_path(base)
                tok = AutoTokenizer.from_pretrained(model)
                lm = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
                lm = PeftModel.from_pretrained(lm, model).merge_and_unload()
            else:
                path = resolve_model_path(model)
                tok = AutoTokenizer.from_pretrained(path)
                lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        except OSError as e:
            raise CodrlError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        lm.to(device)
        lm.eval()
        return cls(lm, tok, max_batch_size=max_batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, request: GenRequest) -> list[int]:
        """Token ids of the chat prompt with the generation prompt and the reply prefix."""
        text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        text += request.reply_prefix
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ------------------------------------------------------------------------
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[SamplingParams, list[tuple[int, list[int]]]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[req.sampling].append((i, self.encode_prompt(req)))
        for params, items in groups.items():
            items.sort(key=lambda it: len(it[1]))
            for start in range(0, len(items), self.max_batch_size):
                chunk = items[start:start + self.max_batch_size]
                outs = self._generate_batch([ids for _, ids in chunk], params)
                for (i, _), out in zip(chunk, outs):
                    results[i] = out
        self.stats.requests += len(requests)
        return [r for r in results if r is not None]

    def _cut(self, toks: list[int], stop: tuple[str, ...]) -> tuple[list[int], str]:
        """Cut a padded row after its end-of-sequence token or the token completing a stop string."""
        for t, tok in enumerate(toks):
            if tok in self.eos_ids:
                toks = toks[: t + 1]
                break
        else:
            if not stop:
                return toks, "length"
        if stop:
            text = ""
            for t, tok in enumerate(toks):
                text += self.tokenizer.decode([tok])
                if any(s in text for s in stop):
                    # confirm on a proper decode (multi-token characters), then cut here
                    if any(s in self.tokenizer.decode(toks[: t + 1]) for s in stop):
                        return toks[: t + 1], "stop"
        if toks and toks[-1] in self.eos_ids:
            return toks, "stop"
        return toks, "length"

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[GenResult]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        recorder = _LogprobRecorder(params.temperature)
        sample = params.temperature > 0
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None,
                top_k=0 if sample else None,
                max_new_tokens=params.max_new_tokens,
                logits_processor=[recorder],
                stop_strings=list(params.stop) or None,
                tokenizer=self.tokenizer if params.stop else None,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
            )
        finally:
            if was_training:
                self.model.train()
        logprobs = recorder.finish(out.sequences).cpu()  # on the model's device, then moved
        seqs = out.sequences.cpu()
        new = seqs[:, width:]
        self.stats.generate_calls += 1
        self.stats.forward_calls += new.shape[1]
        results = []
        for r, p in enumerate(prompts):
            toks = new[r].tolist()
            toks, finish = self._cut(toks, params.stop)
            lps = logprobs[r, : len(toks)].tolist()
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            self.stats.prompt_tokens += len(p)
            self.stats.completion_tokens += len(toks)
            results.append(GenResult(text=text, prompt_ids=list(p), completion_ids=toks, logprobs=lps,
                                     finish_reason=finish))
        return results
