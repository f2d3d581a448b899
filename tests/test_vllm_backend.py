"""The vLLM generation engine (codrl.backends.vllm_backend).

Two kinds of tests live here:

* quick ones that run anywhere (CI: CPU only, no vLLM): the one-line errors when vLLM, a recent
  enough vLLM or a CUDA GPU is missing, and the pure helpers (sampling-parameter conversion,
  logprob extraction, stop-string cutting, result assembly) on plain Python objects, with parity
  checks against the transformers backend's prompt encoding and completion cutting;
* ``slow`` ones that need the ``vllm`` package and a CUDA GPU (skipped cleanly otherwise): greedy
  output equal to :class:`~codrl.backends.hf.HFBackend`'s on the embedded model, sampled-token
  logprobs equal to a teacher-forced transformers recomputation, stop strings kept, and weight
  refresh (LoRA and full weights) changing what the engine samples.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from codrl.backends import vllm_backend as vb
from codrl.backends.base import GenRequest, SamplingParams
from codrl.errors import CodrlError

# -- missing pieces: one clear line each -----------------------------------------------------------


def _fake_vllm(version: str) -> types.ModuleType:
    """A stand-in ``vllm`` module: a data holder with a version, nothing of the engine."""
    mod = types.ModuleType("vllm")
    mod.__version__ = version  # type: ignore[attr-defined]
    return mod


def _assert_one_line(err: pytest.ExceptionInfo[CodrlError], expected: str) -> None:
    msg = str(err.value)
    assert msg == expected
    assert "\n" not in msg


def test_missing_vllm_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(CodrlError) as err:
        vb.VLLMBackend("some/model")
    _assert_one_line(err, "vLLM backend needs the `vllm` package: pip install 'codrl[vllm]'")


def test_missing_vllm_fails_before_loading_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)

    def no_load(*_a: object, **_k: object) -> str:
        raise AssertionError("the model must not be resolved before vLLM is found")

    monkeypatch.setattr("codrl.backends.embedded.resolve_model_path", no_load)
    with pytest.raises(CodrlError) as err:
        vb.VLLMBackend.from_pretrained(None)
    _assert_one_line(err, "vLLM backend needs the `vllm` package: pip install 'codrl[vllm]'")


def test_training_config_selects_vllm_and_fails_clearly_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from codrl.train.config import TrainConfig
    from codrl.train.policy import build_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = TrainConfig.model_validate({"envs": [{"name": "frozenlake"}], "model": {"engine": "vllm",
                                                                                   "path": "some/model"}})
    assert cfg.model.engine == "vllm"
    with pytest.raises(CodrlError) as err:
        build_vllm(cfg, tokenizer=object())
    _assert_one_line(err, "vLLM backend needs the `vllm` package: pip install 'codrl[vllm]'")


def test_broken_vllm_install_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_import(name: str) -> object:
        raise ImportError("libcudart.so.12: cannot open shared object file\nmore detail", name="vllm._C")

    monkeypatch.setattr(vb.importlib, "import_module", failing_import)
    with pytest.raises(CodrlError) as err:
        vb.import_vllm()
    _assert_one_line(err, "vLLM backend: the `vllm` package failed to import: "
                          "libcudart.so.12: cannot open shared object file")


def test_old_vllm_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm("0.9.2"))
    with pytest.raises(CodrlError) as err:
        vb.VLLMBackend("some/model")
    _assert_one_line(err, "vLLM backend needs vllm>=0.10.2 (temperature-scaled logprobs through "
                          "logprobs_mode='processed_logprobs'); installed: 0.9.2")


def test_no_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm("0.11.1rc2.dev3+cu129"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CodrlError) as err:
        vb.VLLMBackend("some/model")
    _assert_one_line(err, "vLLM backend needs a CUDA GPU; none found")


def test_release_versions() -> None:
    assert vb._release("0.10.2") == (0, 10, 2)
    assert vb._release("0.11.1rc2.dev3+cu129") == (0, 11, 1)
    assert vb._release("0.10.1.1") < vb._release(vb.MIN_VLLM_VERSION) <= vb._release("0.10.2")
    assert vb._release("not a version") == ()


def test_lora_rank_slot() -> None:
    assert [vb.lora_rank_slot(r) for r in (1, 8, 9, 16, 17, 64, 300, 512)] == [8, 8, 16, 16, 32, 64, 320, 512]
    with pytest.raises(CodrlError, match="exceeds"):
        vb.lora_rank_slot(513)


# -- sampling parameters ----------------------------------------------------------------------------

def test_sampling_kwargs_sample() -> None:
    kw = vb.vllm_sampling_kwargs(SamplingParams(0.7, 0.9, 48, ("</answer>", "\n\n")), stop_token_ids=[2, 7])
    assert kw == {
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 48, "stop": ["</answer>", "\n\n"],
        "include_stop_str_in_output": True, "stop_token_ids": [2, 7], "logprobs": 0,
    }


def test_sampling_kwargs_seed() -> None:
    assert vb.vllm_sampling_kwargs(SamplingParams(), seed=2**61)["seed"] == 2**61
    assert "seed" not in vb.vllm_sampling_kwargs(SamplingParams())


def test_sampling_kwargs_greedy_and_no_stop() -> None:
    kw = vb.vllm_sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5, max_new_tokens=3))
    assert kw["temperature"] == 0.0 and kw["top_p"] == 1.0 and kw["max_tokens"] == 3
    assert kw["stop"] is None and kw["stop_token_ids"] is None
    assert kw["logprobs"] == 0 and kw["include_stop_str_in_output"] is True


# -- logprobs ---------------------------------------------------------------------------------------

def test_sampled_logprobs_from_logprob_holders() -> None:
    lp = SimpleNamespace
    positions = [{5: lp(logprob=-0.5, rank=1)}, {9: lp(logprob=-2.0, rank=3), 4: lp(logprob=-0.1, rank=1)}]
    assert vb.sampled_logprobs([5, 9], positions) == [-0.5, -2.0]


def test_sampled_logprobs_plain_floats_and_extra_positions() -> None:
    assert vb.sampled_logprobs([1], [{1: -0.25}, {3: -1.0}]) == [-0.25]
    assert vb.sampled_logprobs([], []) == []


@pytest.mark.parametrize(("tokens", "positions", "match"), [
    ([1, 2], None, "no logprobs"),
    ([1, 2], [{1: -0.1}], "1 logprob positions for 2 tokens"),
    ([1, 2], [{1: -0.1}, {3: -0.2}], "lack the sampled token 2"),
])
def test_sampled_logprobs_errors(tokens: list[int], positions: list[dict[int, float]] | None, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        vb.sampled_logprobs(tokens, positions)


# -- stop strings and results -----------------------------------------------------------------------

#: A toy vocabulary: token id -> text (id 0 is the end-of-sequence token, decoded as "<eos>").
_VOCAB = {0: "<eos>", 1: "a", 2: "b", 3: "</", 4: "ans", 5: "wer>", 6: "</answer>x", 7: " ", 8: "é"}


def _decode(ids: list[int], skip_special_tokens: bool = False) -> str:
    return "".join("" if (skip_special_tokens and i == 0) else _VOCAB[i] for i in ids)


def test_cut_after_token_completing_stop_string() -> None:
    toks, stopped = vb.cut_completion([1, 3, 4, 5, 2, 2], ("</answer>",), [0], _decode)
    assert toks == [1, 3, 4, 5] and stopped
    assert _decode(toks).endswith("</answer>")


def test_cut_keeps_a_token_that_runs_past_the_stop_string() -> None:
    toks, stopped = vb.cut_completion([1, 6, 2], ("</answer>",), [0], _decode)
    assert toks == [1, 6] and stopped  # like the transformers backend: cut after the token, not inside it


def test_cut_at_eos_before_any_stop_string() -> None:
    assert vb.cut_completion([1, 0, 3, 4, 5], ("</answer>",), [0], _decode) == ([1, 0], True)
    assert vb.cut_completion([1, 2, 0, 1], (), [0], _decode) == ([1, 2, 0], True)


def test_cut_without_stop_is_length() -> None:
    assert vb.cut_completion([1, 2, 1], ("</answer>",), [0], _decode) == ([1, 2, 1], False)
    assert vb.cut_completion([], ("x",), [0], _decode) == ([], False)


def test_cut_first_of_several_stop_strings() -> None:
    toks, stopped = vb.cut_completion([1, 7, 2, 3, 4, 5], ("</answer>", " "), [0], _decode)
    assert toks == [1, 7] and stopped


@pytest.mark.parametrize(("stopped", "engine", "expected"), [
    (True, "length", "stop"), (False, "stop", "stop"), (False, "length", "length"),
    (False, None, "length"), (False, "abort", "error"),
])
def test_finish_reason(stopped: bool, engine: str | None, expected: str) -> None:
    assert vb.finish_reason_of(stopped, engine) == expected


def test_to_gen_result_cuts_tokens_logprobs_and_text() -> None:
    completion = SimpleNamespace(
        token_ids=[8, 3, 4, 5, 2],  # vLLM may return a token past the stop string's token; it is cut
        logprobs=[{8: -0.1}, {3: -0.2}, {4: -0.3}, {5: -0.4}, {2: -0.5}],
        finish_reason="stop", text="é</answer>",
    )
    res = vb.to_gen_result([10, 11], completion, SamplingParams(1.0, 1.0, 8, ("</answer>",)), [0], _decode)
    assert res.prompt_ids == [10, 11]
    assert res.completion_ids == [8, 3, 4, 5]
    assert res.logprobs == [-0.1, -0.2, -0.3, -0.4]
    assert res.text == "é</answer>" and res.finish_reason == "stop" and res.token_exact


def test_to_gen_result_eos_and_length() -> None:
    eos = SimpleNamespace(token_ids=[1, 0], logprobs=[{1: -1.0}, {0: -0.5}], finish_reason="stop")
    res = vb.to_gen_result([], eos, SamplingParams(), [0], _decode)
    assert res.completion_ids == [1, 0] and res.text == "a" and res.finish_reason == "stop"
    assert res.logprobs == [-1.0, -0.5]
    long = SimpleNamespace(token_ids=[1, 2], logprobs=[{1: -1.0}, {2: -2.0}], finish_reason="length")
    res = vb.to_gen_result([], long, SamplingParams(max_new_tokens=2), [0], _decode)
    assert res.completion_ids == [1, 2] and res.text == "ab" and res.finish_reason == "length"


# -- parity with the transformers backend on the real tokenizer ------------------------------------

_CHATS = [
    GenRequest([{"role": "user", "content": "What is 2 + 3? Answer in one word."}]),
    GenRequest([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
               reply_prefix="<answer>"),
    GenRequest([{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "Again, é and 日本."}], reply_prefix="<answer>Direction "),
]


def test_prompt_encoding_matches_hf_backend(embedded_backend: object) -> None:
    for req in _CHATS:
        assert vb.encode_chat_prompt(embedded_backend.tokenizer, req) == embedded_backend.encode_prompt(req)


def _reference_cut(toks: list[int], stop: tuple[str, ...], eos: list[int], decode: object) -> tuple[list[int], str]:
    """Where the transformers backend stops, from its definition: after the first end-of-sequence
    token, or after the first token whose decode-so-far holds a stop string that was not there before."""
    for t, tok in enumerate(toks):
        if tok in eos or any(s in decode(toks[: t + 1]) and s not in decode(toks[:t]) for s in stop):
            return toks[: t + 1], "stop"
    return toks, "length"


@pytest.mark.parametrize("reply", [
    "Direction N</answer> and more", "I think </ans", "a</answer>", "日本</answer>\n\nmore</answer>",
    "no stop here at all", "two\n\nparagraphs", "caf\u00e9\u2192 ok\u2192",
])
@pytest.mark.parametrize("stop", [("</answer>",), ("</answer>", "\n\n"), ("\u2192",), ()])
def test_cut_matches_hf_definition(embedded_backend: object, reply: str, stop: tuple[str, ...]) -> None:
    tok = embedded_backend.tokenizer
    eos = embedded_backend.eos_ids
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    for toks in (ids, ids[:3] + [eos[0]] + ids[3:]):
        mine, stopped = vb.cut_completion(toks, stop, eos, tok.decode)
        assert (mine, vb.finish_reason_of(stopped, "length")) == _reference_cut(toks, stop, eos, tok.decode)


# -- on a GPU with vLLM (slow; skipped without them) ------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
_GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def needs_vllm() -> None:
    """Skip unless the ``vllm`` package imports (list it before fixtures that load models)."""
    pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def vllm_engine() -> object:
    """The embedded model in vLLM, fp32 like the reference, full-weight sync enabled."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        backend = vb.VLLMBackend.from_pretrained(None, dtype="float32", gpu_memory_utilization=0.25,
                                                 enforce_eager=True, seed=0)
    except CodrlError as e:
        pytest.skip(str(e))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf_gpu() -> object:
    """The embedded model through the transformers backend on the GPU (fp32): the reference."""
    from codrl.backends.hf import HFBackend

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        return HFBackend.from_pretrained(None, device="cuda", dtype="float32")
    except CodrlError as e:
        pytest.skip(str(e))


def _teacher_forced(hf: object, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """log_softmax(logits / T) of each completion token, recomputed by transformers."""
    ids = torch.tensor([prompt + completion], device=hf.device)
    with torch.no_grad():
        logits = hf.model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(1, torch.tensor(completion, device=lp.device)[:, None])[:, 0].tolist()


@pytest.mark.slow
@gpu
def test_greedy_equals_hf_backend(vllm_engine: object, hf_gpu: object) -> None:
    reqs = [GenRequest(r.messages, _GREEDY, r.reply_prefix) for r in _CHATS]
    mine, ref = vllm_engine.generate(reqs), hf_gpu.generate(reqs)
    for a, b in zip(mine, ref):
        assert a.prompt_ids == b.prompt_ids
        assert a.completion_ids == b.completion_ids
        assert a.text == b.text and a.finish_reason == b.finish_reason
        # greedy logprobs are scored at temperature 1, as in the transformers backend
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
    again = vllm_engine.generate(reqs)  # served from the prefix cache now
    assert [r.completion_ids for r in again] == [r.completion_ids for r in mine]


@pytest.mark.slow
@gpu
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_sampled_logprobs_match_teacher_forcing(vllm_engine: object, hf_gpu: object, temperature: float) -> None:
    params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=32)
    reqs = [GenRequest(r.messages, params, r.reply_prefix) for r in _CHATS for _ in range(2)]
    for res in vllm_engine.generate(reqs):
        assert len(res.logprobs) == len(res.completion_ids) > 0
        expected = _teacher_forced(hf_gpu, res.prompt_ids, res.completion_ids, temperature)
        assert res.logprobs == pytest.approx(expected, abs=5e-3)


@pytest.mark.slow
@gpu
def test_stop_string_kept_like_hf(vllm_engine: object, hf_gpu: object) -> None:
    req = GenRequest([{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
                     SamplingParams(temperature=0.0, max_new_tokens=64, stop=("7",)))
    (mine,), (ref,) = vllm_engine.generate([req]), hf_gpu.generate([req])
    assert "7" in mine.text and mine.finish_reason == "stop"
    assert "7" not in vllm_engine.tokenizer.decode(mine.completion_ids[:-1])
    assert mine.completion_ids == ref.completion_ids and mine.text == ref.text


@pytest.mark.slow
@gpu
def test_full_weight_sync_changes_and_restores_outputs(vllm_engine: object, hf_gpu: object) -> None:
    reqs = [GenRequest(r.messages, _GREEDY, r.reply_prefix) for r in _CHATS]
    before = [r.completion_ids for r in vllm_engine.generate(reqs)]
    model = hf_gpu.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    v0 = vllm_engine.weights_version
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layers.0." in name or "layers.1." in name:
                    p.add_(torch.randn_like(p) * 0.2)
        assert vllm_engine.sync_weights(model) == v0 + 1
        changed = vllm_engine.generate(reqs)
        assert [r.completion_ids for r in changed] != before
        assert [r.completion_ids for r in changed] == [r.completion_ids for r in hf_gpu.generate(reqs)]
    finally:
        model.load_state_dict(saved)
    assert vllm_engine.sync_weights(model) == v0 + 2
    assert [r.completion_ids for r in vllm_engine.generate(reqs)] == before


@pytest.mark.slow
@gpu
def test_lora_refresh_changes_outputs(needs_vllm: None) -> None:
    from peft import LoraConfig, get_peft_model

    from codrl.backends.hf import HFBackend

    engine = vb.VLLMBackend.from_pretrained(None, enable_lora=True, max_lora_rank=8, dtype="bfloat16",
                                            gpu_memory_utilization=0.25, enforce_eager=True, seed=0)
    try:
        base = HFBackend.from_pretrained(None, device="cuda", dtype="float32").model
        peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                     task_type="CAUSAL_LM"))
        reqs = [GenRequest(r.messages, _GREEDY, r.reply_prefix) for r in _CHATS]
        plain = [r.completion_ids for r in engine.generate(reqs)]
        assert engine.sync_weights(peft_model) == 1  # B = 0: the adapter changes nothing yet
        assert [r.completion_ids for r in engine.generate(reqs)] == plain
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.5)
        assert engine.sync_weights(peft_model) == 2
        assert [r.completion_ids for r in engine.generate(reqs)] != plain
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.zero_()
        assert engine.sync_weights(peft_model) == 3
        assert [r.completion_ids for r in engine.generate(reqs)] == plain
        assert len(list(engine.work_dir.iterdir())) <= 2  # old adapter folders are pruned
    finally:
        engine.close()
