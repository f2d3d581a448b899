"""vLLM generation engine for CUDA GPUs (optional extra: ``pip install 'codrl[vllm]'``).

:class:`VLLMBackend` runs vLLM's offline engine (``vllm.LLM``) in the training process and keeps
the token-exact contract of :class:`~codrl.backends.hf.HFBackend`:

* **Prompts in as token ids.** Each chat is encoded with the model's transformers tokenizer exactly
  as the transformers backend does it (``apply_chat_template(..., add_generation_prompt=True)`` +
  ``reply_prefix``, tokenized with ``add_special_tokens=False``) and handed to vLLM as
  ``TokensPrompt(prompt_token_ids=...)``, so ``GenResult.prompt_ids`` are identical across engines.
* **Sampled token ids and their logprobs out.** The engine is built with
  ``logprobs_mode="processed_logprobs"`` and every request asks for ``logprobs=0`` (the sampled
  token only). vLLM (>= 0.10.2) then returns ``log_softmax(logits / temperature)`` of the sampled
  token: the same convention as the transformers backend and the trainer, exactly when
  ``top_p == 1`` (codrl's default) and for greedy decoding (temperature 0 scores at temperature 1,
  like the transformers backend). With ``top_p < 1`` vLLM renormalises over the nucleus, so its
  logprobs are higher by ``-log(nucleus mass)`` than codrl's un-renormalised convention; the
  backend warns once (or raises, with ``strict_logprobs=True``). Older vLLM releases return
  untempered logprobs and are refused with a one-line :class:`~codrl.errors.CodrlError`.
* **Stop strings kept.** Requests pass ``stop=...`` with ``include_stop_str_in_output=True``; the
  completion is then cut, like the transformers backend cuts it, right after the token that
  completes the first stop string (or after the first end-of-sequence token), and ``text`` is the
  decode of exactly those tokens.
* **Seeds.** Each request gets its own vLLM seed, drawn from the global torch RNG in request order
  like the transformers backend draws its seeds (``GenRequest.seed`` wins), so rollouts repeat
  under a seeded trainer; the samples differ from the transformers backend's, their law does not.
* **Automatic prefix caching** is on (``enable_prefix_caching=True``): the growing chats of a
  lifecycle reuse the KV cache of their shared prefix, so no per-session state is kept here
  (:meth:`VLLMBackend.release` is a no-op).

Weights are refreshed after each training step without restarting the engine
(:meth:`VLLMBackend.sync_weights`, counted by :attr:`VLLMBackend.weights_version`):

* **LoRA** (engine built with ``enable_lora=True``): the peft adapter is saved to a fresh versioned
  folder and later requests carry a new ``LoRARequest(name, int_id, path)`` with a new integer id,
  vLLM's documented way to serve a new adapter.
* **Full weights**: the state dict is written as safetensors to a versioned folder and each worker
  loads it into its model with the model's ``load_weights`` through the public
  ``LLM.apply_model`` (only the file path crosses the process boundary); then
  ``LLM.reset_prefix_cache()`` drops KV blocks computed with the old weights. ``apply_model`` sends
  a function to the engine process, which vLLM only allows with
  ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``; the backend sets it (unless already set) before the
  engine starts when full-weight sync is enabled (``full_weight_sync=True``, the default when LoRA
  is off).

vLLM is imported lazily inside the class: importing this module never needs vLLM or a GPU, and
constructing the backend without them raises a one-line :class:`~codrl.errors.CodrlError`.
See ``docs/vllm.md``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from codrl.backends.base import (
    Backend,
    GenRequest,
    GenResult,
    SamplingParams,
    end_of_sequence_ids,
    overflow_result,
)
from codrl.backends.chat import completes_stop, cut_completion, encode_chat_prompt  # noqa: F401 - shared by every engine
from codrl.errors import CodrlError

__all__ = [
    "MIN_VLLM_VERSION",
    "VLLMBackend",
    "completes_stop",
    "cut_completion",
    "encode_chat_prompt",
    "finish_reason_of",
    "import_vllm",
    "lora_rank_slot",
    "sampled_logprobs",
    "to_gen_result",
    "vllm_sampling_kwargs",
]

log = logging.getLogger(__name__)

#: First vLLM release whose ``logprobs_mode="processed_logprobs"`` includes the temperature.
MIN_VLLM_VERSION = "0.10.2"

_MISSING_VLLM = "vLLM backend needs the `vllm` package: pip install 'codrl[vllm]'"
_NO_GPU = "vLLM backend needs a CUDA GPU; none found"
_INSECURE_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"


# -- pure helpers (no vLLM needed; unit-tested on CPU) --------------------------------------------

def vllm_sampling_kwargs(params: SamplingParams, stop_token_ids: Sequence[int] = (),
                         seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one codrl :class:`SamplingParams`.

    ``logprobs=0`` returns the logprob of the sampled token only; ``include_stop_str_in_output``
    keeps a matched stop string, as the transformers backend does. ``stop_token_ids`` lists the
    end-of-sequence ids the transformers backend stops on (the tokenizer's and the generation
    config's), so both engines end a reply on the same tokens. Temperature 0 is vLLM's greedy
    decoding (vLLM then ignores ``top_p``; it is sent as 1.0). ``seed`` gives the request its own
    random stream (vLLM's per-request seed).
    """
    greedy = params.temperature <= 0
    kwargs: dict[str, Any] = {
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": 1.0 if greedy else float(params.top_p),
        "max_tokens": int(params.max_new_tokens),
        "stop": list(params.stop) or None,
        "include_stop_str_in_output": True,
        "stop_token_ids": [int(t) for t in stop_token_ids] or None,
        "logprobs": 0,
    }
    if seed is not None:
        kwargs["seed"] = int(seed)
    return kwargs


def sampled_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` mappings.

    ``logprobs[i]`` maps token ids to ``Logprob`` objects (``.logprob``) or plain floats; the
    sampled token is always among them (vLLM returns it in addition to the top-k). A missing
    position or token is an engine error, not something to paper over with zeros.
    """
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; requests must set logprobs=0")
    if len(logprobs) < len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} logprob positions for {len(token_ids)} tokens")
    out: list[float] = []
    for i, tok in enumerate(token_ids):
        entry = logprobs[i]
        if tok not in entry:
            raise RuntimeError(f"vLLM logprobs at position {i} lack the sampled token {tok}")
        value = entry[tok]
        out.append(float(getattr(value, "logprob", value)))
    return out


def finish_reason_of(stopped: bool, engine_reason: str | None) -> str:
    """codrl's finish reason: ``"stop"`` on end-of-sequence or a stop string, ``"length"`` at the
    token limit, ``"error"`` for anything else vLLM reports (an aborted request)."""
    if stopped or engine_reason == "stop":
        return "stop"
    if engine_reason in ("length", None):
        return "length"
    return "error"


def to_gen_result(prompt_ids: Sequence[int], completion: Any, params: SamplingParams, eos_ids: Iterable[int],
                  decode: Callable[..., str]) -> GenResult:
    """Turn one vLLM ``CompletionOutput`` (``.token_ids``, ``.logprobs``, ``.finish_reason``) into a
    :class:`GenResult`. ``decode(ids, skip_special_tokens=...)`` is the tokenizer's decode; the
    text is the decode of exactly the kept tokens (special tokens skipped), as in the transformers
    backend, not vLLM's own detokenized text.
    """
    toks = list(completion.token_ids)
    lps = sampled_logprobs(toks, completion.logprobs)
    kept, stopped = cut_completion(toks, params.stop, eos_ids, lambda ids: decode(ids))
    return GenResult(
        text=decode(kept, skip_special_tokens=True),
        prompt_ids=list(prompt_ids),
        completion_ids=kept,
        logprobs=lps[: len(kept)],
        finish_reason=finish_reason_of(stopped, getattr(completion, "finish_reason", None)),
    )


def _release(version: str) -> tuple[int, ...]:
    """Numeric release of a version string: ``"0.11.1rc2.dev3+cu129"`` -> ``(0, 11, 1)``."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release
    except InvalidVersion:
        return ()


#: LoRA ranks vLLM accepts for ``max_lora_rank``.
LORA_RANK_SLOTS = (8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for slot in LORA_RANK_SLOTS:
        if rank <= slot:
            return slot
    raise CodrlError(f"vLLM backend: LoRA rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANK_SLOTS[-1]}")


def import_vllm() -> Any:
    """Import vLLM or raise a one-line :class:`CodrlError` naming what is missing.

    Checks, in order: the ``vllm`` package, its version (>= :data:`MIN_VLLM_VERSION`), a CUDA GPU.
    """
    try:
        vllm = importlib.import_module("vllm")
    except ImportError as e:
        if e.name in (None, "vllm"):
            raise CodrlError(_MISSING_VLLM) from None
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CodrlError(f"vLLM backend: the `vllm` package failed to import: {first}") from None
    version = str(getattr(vllm, "__version__", "0"))
    if _release(version) < _release(MIN_VLLM_VERSION):
        raise CodrlError(
            f"vLLM backend needs vllm>={MIN_VLLM_VERSION} (temperature-scaled logprobs through "
            f"logprobs_mode='processed_logprobs'); installed: {version}")
    import torch

    if not torch.cuda.is_available():
        raise CodrlError(_NO_GPU)
    return vllm


def _is_peft_model(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "save_pretrained")


def _load_weights_file(path: str, model: Any) -> int:
    """Run inside each vLLM worker: load a safetensors file into the vLLM model (``load_weights``
    maps Hugging Face parameter names, fusing q/k/v and gate/up projections). Module-level so that
    the engine process imports it by name; returns the number of tensors read."""
    from safetensors.torch import load_file

    weights = load_file(path, device="cpu")
    model.load_weights(iter(weights.items()))
    return len(weights)


# -- the backend ----------------------------------------------------------------------------------

class VLLMBackend(Backend):
    """vLLM's offline engine on one CUDA GPU, token-exact like :class:`~codrl.backends.hf.HFBackend`.

    Parameters
    ----------
    model_path:
        A Hugging Face model folder (or hub id) that vLLM loads.
    tokenizer:
        The transformers tokenizer used to encode prompts and decode replies; loaded from
        ``model_path`` when None. It must be the trainer's tokenizer so that token ids agree.
    enable_lora, max_lora_rank:
        Serve a peft LoRA adapter on top of the base weights (:meth:`sync_weights` then saves the
        adapter). ``max_lora_rank`` must be at least the adapter's rank.
    lora_path:
        An adapter folder to serve from the start (e.g. a LoRA checkpoint's ``model/``).
    full_weight_sync:
        Allow :meth:`sync_weights` of full weights (sets ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``
        for the engine, see the module doc). Default: True when LoRA is off.
    dtype, gpu_memory_utilization, seed, max_model_len, enforce_eager:
        Passed to ``vllm.LLM``. ``gpu_memory_utilization`` defaults to 0.5 so that a trainer can
        share the GPU; raise it when generation runs alone.
    seeded:
        Give every request its own seed, drawn from the global torch RNG like the transformers
        backend draws them (``GenRequest.seed`` wins): rollouts repeat under a seeded trainer. The
        samples differ from the transformers backend's (another sampler), only their law is equal.
    strict_logprobs:
        Raise instead of warning when a request has ``0 < top_p < 1`` (vLLM's logprobs are then
        renormalised over the nucleus; see the module doc).
    chat_template_kwargs:
        Extra arguments of the chat template (e.g. ``{"enable_thinking": False}``), passed to
        ``apply_chat_template`` when prompts are encoded.
    work_dir:
        Where versioned adapter/weight folders go; a temporary folder (removed by :meth:`close`)
        when None.
    engine_kwargs:
        Any further ``vllm.LLM`` / ``EngineArgs`` keyword arguments.
    """

    token_exact = True
    max_batch_size = 1024  # vLLM schedules its own batches; one engine call takes every request

    def __init__(self, model_path: str, tokenizer: Any = None, *, enable_lora: bool = False,
                 max_lora_rank: int = 16, lora_path: str | None = None, full_weight_sync: bool | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.5, seed: int = 0,
                 max_model_len: int | None = None, enforce_eager: bool = False, strict_logprobs: bool = False,
                 seeded: bool = True, chat_template_kwargs: Mapping[str, Any] | None = None,
                 work_dir: str | Path | None = None, **engine_kwargs: Any) -> None:
        super().__init__(chat_template_kwargs)
        vllm = import_vllm()
        if lora_path is not None and not enable_lora:
            raise CodrlError("vLLM backend: lora_path needs enable_lora=True")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(lora_path or model_path)
        self.tokenizer = tokenizer
        self.model_path = str(model_path)
        self.enable_lora = enable_lora
        self.full_weight_sync = (not enable_lora) if full_weight_sync is None else full_weight_sync
        self.strict_logprobs = strict_logprobs
        self.seeded = seeded
        self.eos_ids = self._eos_ids(tokenizer, model_path)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        #: Number of :meth:`sync_weights` calls applied to the engine (0: the weights it loaded).
        self.weights_version = 0
        self._own_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="codrl-vllm-")) if work_dir is None else Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._warned_top_p = False
        self._lora_request: Any = None
        self._lora_next_id = 1
        self._versions: list[Path] = []  # folders written by sync_weights, oldest first
        if self.full_weight_sync and _INSECURE_ENV not in os.environ:
            # apply_model ships a function to the engine process; vLLM only (de)serialises callables
            # with this opt-in. The engine process inherits the environment when it starts.
            os.environ[_INSECURE_ENV] = "1"
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "enable_prefix_caching": True,
            "logprobs_mode": "processed_logprobs",
            "enforce_eager": enforce_eager,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank_slot(max_lora_rank), max_loras=1)
        kwargs.update(engine_kwargs)
        self._vllm = vllm
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception:
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        try:
            self.context_window = int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):  # another vLLM layout: the window stays unknown
            self.context_window = None
        if lora_path is not None:
            self._lora_request = self._new_lora_request(str(lora_path))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | None = None, **kwargs: Any) -> VLLMBackend:
        """Load a model folder, a hub id, or the embedded default when ``model`` is None.

        Mirrors :meth:`HFBackend.from_pretrained <codrl.backends.hf.HFBackend.from_pretrained>`:
        ``"embedded"``/``None`` resolve to the embedded SmolLM2 folder, and a LoRA checkpoint's
        ``model/`` folder (a peft adapter) is served on its base model as a LoRA (no merge needed).
        Keyword arguments go to :class:`VLLMBackend`.
        """
        import_vllm()  # fail fast, before converting the embedded model
        from transformers import AutoTokenizer

        from codrl.backends.embedded import is_adapter_dir, resolve_model_path

        try:
            if model is not None and is_adapter_dir(model):
                from peft import PeftConfig

                peft_cfg = PeftConfig.from_pretrained(model)
                base_path = resolve_model_path(peft_cfg.base_model_name_or_path)
                tok = AutoTokenizer.from_pretrained(model)
                kwargs.setdefault("enable_lora", True)
                kwargs.setdefault("max_lora_rank", lora_rank_slot(int(getattr(peft_cfg, "r", 16) or 16)))
                return cls(base_path, tok, lora_path=str(model), **kwargs)
            path = resolve_model_path(model)
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise CodrlError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        return cls(path, tok, **kwargs)

    @staticmethod
    def _eos_ids(tokenizer: Any, model_path: str) -> list[int]:
        """End-of-sequence ids, as the transformers backend collects them (tokenizer + generation config)."""
        try:
            from transformers import GenerationConfig

            gen_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except (OSError, ValueError):
            gen_eos = None
        return end_of_sequence_ids(tokenizer, gen_eos)

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, request: GenRequest) -> list[int]:
        """Token ids of the chat prompt with the generation prompt and the reply prefix."""
        return encode_chat_prompt(self.tokenizer, request, self.chat_template_kwargs)

    # -- generation ------------------------------------------------------------------------
    def _check_top_p(self, params: SamplingParams) -> None:
        if params.temperature <= 0 or params.top_p >= 1.0:
            return
        msg = (f"vLLM backend: top_p={params.top_p} < 1: vLLM's logprobs are renormalised over the nucleus, "
               "unlike codrl's convention (log_softmax(logits/temperature)); use top_p=1.0 for rollout "
               "logprobs, or let the trainer recompute them (old_logprobs: recompute)")
        if self.strict_logprobs:
            raise CodrlError(msg)
        if not self._warned_top_p:
            log.warning(msg)
            self._warned_top_p = True

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        import torch

        # One seed per request from the global torch RNG, in request order (as the transformers
        # backend draws them), so a seeded trainer gets reproducible rollouts; a request's own
        # ``seed`` wins. ``seeded=False`` leaves sampling to vLLM's engine-wide generator.
        seeds = torch.randint(0, 2**62, (len(requests),)).tolist() if self.seeded else [None] * len(requests)
        prompts = [self.encode_prompt(r) for r in requests]
        # A request over the context window is answered with an overflow result, never sent.
        sent = [i for i, (req, ids) in enumerate(zip(requests, prompts, strict=True)) if not self.overflows(len(ids), req)]
        results: list[GenResult] = [overflow_result() for _ in requests]
        if not sent:
            return results
        params = []
        for i in sent:
            req = requests[i]
            self._check_top_p(req.sampling)
            seed = req.seed if req.seed is not None else seeds[i]
            params.append(self._vllm.SamplingParams(**vllm_sampling_kwargs(req.sampling, self.eos_ids, seed)))
        outputs = self.llm.generate(
            [{"prompt_token_ids": prompts[i]} for i in sent],  # vllm.inputs.TokensPrompt (a TypedDict)
            sampling_params=params,
            lora_request=self._lora_request,
            use_tqdm=False,
        )
        if len(outputs) != len(sent):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(sent)} requests")
        for i, out in zip(sent, outputs, strict=True):
            res = to_gen_result(prompts[i], out.outputs[0], requests[i].sampling, self.eos_ids, self.tokenizer.decode)
            self.stats.prompt_tokens += len(prompts[i])
            self.stats.completion_tokens += len(res.completion_ids)
            results[i] = res
        self.stats.generate_calls += 1
        # decode steps of this call (an estimate: the longest completion; vLLM batches continuously)
        self.stats.forward_calls += max(len(results[i].completion_ids) for i in sent)
        self.stats.requests += len(sent)
        return results

    def release(self, session: str) -> None:
        """No-op: vLLM's automatic prefix caching reuses the KV cache of continued chats by itself
        (``GenRequest.session`` is ignored), and evicts blocks of finished ones as it needs room."""

    # -- weights ---------------------------------------------------------------------------
    def _new_lora_request(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_next_id
        self._lora_next_id += 1
        return LoRARequest(f"codrl-lora-{lora_id}", lora_id, path)

    def _next_folder(self, kind: str) -> Path:
        folder = self.work_dir / f"{kind}-v{self.weights_version + 1:06d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def _prune_versions(self, keep: int = 2) -> None:
        """Keep the newest ``keep`` folders (the engine may still read the previous adapter)."""
        while len(self._versions) > keep:
            shutil.rmtree(self._versions.pop(0), ignore_errors=True)

    def sync_weights(self, model: Any) -> int:
        """Make the engine sample from ``model``'s current weights; returns the new :attr:`weights_version`.

        Call it after every optimizer step (before the next rollout). ``model`` is the torch
        model being trained: a peft model when the engine serves LoRA (``enable_lora=True``; its
        adapter is saved to a new folder and served under a new ``LoRARequest`` id), else a plain
        transformers model whose full state dict is loaded into the engine in place.
        """
        if self.enable_lora:
            if not _is_peft_model(model):
                raise CodrlError("vLLM backend: enable_lora=True needs a peft (LoRA) model in sync_weights")
            folder = self._next_folder("lora")
            model.save_pretrained(str(folder))
            self._lora_request = self._new_lora_request(str(folder))
        else:
            if _is_peft_model(model):
                raise CodrlError("vLLM backend: a peft (LoRA) model needs VLLMBackend(enable_lora=True)")
            if not self.full_weight_sync:
                raise CodrlError("vLLM backend: full-weight sync is off; construct with full_weight_sync=True")
            from safetensors.torch import save_file

            folder = self._next_folder("weights")
            path = folder / "model.safetensors"
            # clone: tied tensors (embeddings / lm_head) share storage, which safetensors refuses
            state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(path))
            del state
            self.llm.apply_model(functools.partial(_load_weights_file, str(path)))
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._versions.append(folder)
        self._prune_versions()
        self.weights_version += 1
        return self.weights_version

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Shut the engine down and remove the temporary work folder."""
        if self.__dict__.pop("llm", None) is not None:
            import gc

            gc.collect()  # the engine (and its GPU memory) goes with the last reference
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
