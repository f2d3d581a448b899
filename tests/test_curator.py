"""The curator context: operation parser and applier (with hypothesis fuzzing), curator lifecycles
on FrozenLake-Obscure with a scripted engine, Ralph-loop mode names, the per-episode hook, and
evaluations that compare contexts.

Fast tests use :class:`CuratorScripted`, a deterministic engine whose reply is a pure function of
the request and whose token ids are the UTF-8 bytes of a plain chat rendering (prompt) and of the
reply (completion), as in ``tests/test_lifecycle.py``. The slow test runs a tiny curator
evaluation on the embedded SmolLM2-135M-Instruct model.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from codrl.backends.base import Backend, GenRequest, GenResult
from codrl.backends.scripted import FunctionBackend
from codrl.envs import Pack, Task, make_env
from codrl.envs.frozenlake import make_spec
from codrl.eval.runner import EvalConfig, evaluate
from codrl.rollout.config import RolloutConfig, result_mode
from codrl.rollout.curator import (
    CURATOR_INSTRUCTIONS,
    CURATOR_SYSTEM,
    Operation,
    apply_operations,
    curator_messages,
    normalize_lesson,
    parse_operations,
    parse_reply,
    render_lessons,
)
from codrl.rollout.experience import EpisodeRecord, Experience, LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, make_jobs, play_lifecycle
from codrl.rollout.prompts import UPDATE_SYSTEM

Rule = Callable[[GenRequest], str]
ENV = make_env("frozenlake")
RIGHT_FIRST = {"1": "Right", "2": "Down", "3": "Left", "4": "Up"}
PREFIX = RolloutConfig().curator_reply_prefix


# --------------------------------------------------------------------------------------------
# the scripted engine


def own_reward(res: LifecycleResult, call: Experience) -> float:
    """The own reward of the episode that made ``call``."""
    return next(m.own_reward for m in res.model_episodes if any(c is call for c in m.calls))


def render(req: GenRequest) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in req.messages) + "<|assistant|>" + req.reply_prefix


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def kind(req: GenRequest) -> str:
    """'C' curator, 'U' hints update, 'S' solve."""
    system = req.messages[0]["content"]
    return "C" if system == CURATOR_SYSTEM else "U" if system == UPDATE_SYSTEM else "S"


_LESSONS_RE = re.compile(r"Current lessons:\n(.*?)\n\nTask:\n", re.DOTALL)


def shown_lessons(req: GenRequest) -> str:
    m = _LESSONS_RE.search(req.messages[-1]["content"])
    assert m is not None, "curator prompt without a 'Current lessons:' section"
    return m.group(1)


class CuratorScripted(FunctionBackend):
    """Deterministic token-exact engine: solve, hints-update and curator replies from three rules."""

    token_exact = True

    def __init__(self, curator: Rule, solve: Rule = lambda req: "1</answer>",
                 update: Rule = lambda req: "code 1 moves Right.") -> None:
        rules = {"C": curator, "S": solve, "U": update}
        super().__init__(lambda req: rules[kind(req)](req))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for req, res in zip(requests, super().generate(requests), strict=True):
            completion = byte_ids(res.text)
            out.append(GenResult(text=res.text, prompt_ids=byte_ids(render(req)), completion_ids=completion,
                                 logprobs=[-((t % 5) + 1) / 4 for t in completion], finish_reason="stop"))
        return out


def hand_pack(rows: list[str], k: int = 3, pack_id: str = "hand") -> Pack:
    spec = make_spec(rows)
    return Pack(pack_id=pack_id, env="frozenlake", split="test", world={"mapping": dict(RIGHT_FIRST)},
                tasks=tuple(Task(task_id=f"{pack_id}/{i}", position=i, spec=spec) for i in range(k)))


def first_obs(pack: Pack, position: int) -> str:
    return ENV.start(pack, pack.tasks[position]).reset()


def cfg_(**kw: object) -> RolloutConfig:
    base: dict[str, object] = {"pack_size": 3, "repeats": 1, "mode": "curator"}
    base.update(kw)
    return RolloutConfig(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# parser


@pytest.mark.parametrize(("line", "op"), [
    ("ADD: code 1 moves Right", Operation("add", None, "code 1 moves Right")),
    ("add:code 1 moves right", Operation("add", None, "code 1 moves right")),
    ("  - Add -   holes   end the task  ", Operation("add", None, "holes end the task")),
    ("* **ADD:** `code 4 is Up`", Operation("add", None, "code 4 is Up")),
    ("3. ADD: numbered bullet", Operation("add", None, "numbered bullet")),
    ("REVISE 2: code 2 moves Down", Operation("revise", 2, "code 2 moves Down")),
    ("revise #12 - fixed", Operation("revise", 12, "fixed")),
    ("• Revise lesson 3: x", Operation("revise", 3, "x")),
    ("EDIT 1: alias", Operation("revise", 1, "alias")),
    ("REMOVE 3", Operation("remove", 3)),
    ("remove 3: it was wrong", Operation("remove", 3)),
    ("> DELETE #4", Operation("remove", 4)),
    ("NONE", Operation("none")),
    ("none.", Operation("none")),
    ("- **None**", Operation("none")),
    ("REVISE 007: leading zeros", Operation("revise", 7, "leading zeros")),
    ("REVISE " + "9" * 5000 + ": huge", Operation("revise", 10**9, "huge")),
])
def test_parse_one_line(line: str, op: Operation) -> None:
    parsed = parse_reply(line)
    assert parsed.operations == [op] and parsed.ignored == 0


@pytest.mark.parametrize("line", [
    "I think code 1 moves right.",
    "ADD:",
    "ADD: **",
    "REVISE 2:",
    "REVISE: better wording",  # no index
    "REMOVE the second one",
    "REMOVE 2a",
    "nonetheless",
    "Added a lesson",
    "ADDITION: x",
])
def test_non_operations_are_ignored_and_counted(line: str) -> None:
    parsed = parse_reply(line)
    assert parsed.operations == [] and parsed.ignored == 1 and not parsed.says_none


def test_parse_reply_order_header_and_counts() -> None:
    text = ("Operations:\n\nADD: a\nsome chatter\n   \nREVISE 1: b\nREMOVE 2\n**Operations:**\nNONE\n"
            "ADD:\n")
    parsed = parse_reply(text)
    assert parsed.operations == [Operation("add", None, "a"), Operation("revise", 1, "b"), Operation("remove", 2),
                                 Operation("none")]
    assert parsed.ignored == 2 and parsed.says_none
    assert parse_operations(text) == parsed.operations
    assert parse_reply("").operations == [] and parse_reply("").ignored == 0


# --------------------------------------------------------------------------------------------
# applier


def test_indices_refer_to_the_list_as_shown() -> None:
    lessons = ["a", "b", "c", "d"]
    ops = [Operation("remove", 1), Operation("revise", 2, "B"), Operation("remove", 4), Operation("add", None, "e")]
    res = apply_operations(lessons, ops, max_lessons=8, max_chars=20)
    assert res.lessons == ["B", "c", "e"]  # removing 1 did not renumber 2 and 4
    assert (res.added, res.revised, res.removed, res.rejected, res.none) == (1, 1, 2, 0, 0)
    assert lessons == ["a", "b", "c", "d"]  # the input is not modified


def test_rejected_operations_are_counted() -> None:
    lessons = ["code 1 moves Right", "avoid holes"]
    ops = [
        Operation("remove", 3),                       # out of range
        Operation("revise", 0, "x"),                  # out of range (1-based)
        Operation("revise", 2, "holes end the task"),
        Operation("remove", 2),                       # lesson 2 already edited
        Operation("revise", 2, "again"),              # ... likewise
        Operation("add", None, "Code 1  moves right"),  # duplicate of lesson 1 (case, spacing)
        Operation("add", None, "new"),
        Operation("add", None, "NEW"),                # duplicate of the previous ADD
        Operation("revise", 1, "holes end the task"),  # would duplicate the revised lesson 2
        Operation("none"),
    ]
    res = apply_operations(lessons, ops, max_lessons=8, max_chars=40)
    assert res.lessons == ["code 1 moves Right", "holes end the task", "new"]
    assert res.counts() == {"added": 1, "revised": 1, "removed": 0, "rejected": 7, "none": 1}
    assert res.applied == 2


def test_caps_on_list_length_and_lesson_length() -> None:
    res = apply_operations(["a", "b"], [Operation("add", None, t) for t in "cdef"], max_lessons=4, max_chars=5)
    assert res.lessons == ["a", "b", "c", "d"] and res.added == 2 and res.rejected == 2
    # a removal anywhere in the reply makes room
    ops = [Operation("add", None, "c"), Operation("add", None, "d"), Operation("remove", 1)]
    assert apply_operations(["a", "b"], ops, max_lessons=2, max_chars=5).lessons == ["b", "c"]
    long = apply_operations([], [Operation("add", None, "  one two   three four ")], max_lessons=2, max_chars=9)
    assert long.lessons == ["one two t"]
    assert normalize_lesson("a\nb\t c", 10) == "a b c"


def test_no_op_replies_leave_the_list_identical() -> None:
    lessons = ["x", "y"]
    for ops in ([], [Operation("none")], [Operation("remove", 5), Operation("add", None, "X")]):
        assert apply_operations(lessons, ops, 4, 10).lessons == lessons


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="max_lessons"):
        apply_operations([], [], 0, 10)
    with pytest.raises(ValueError, match="over its caps"):
        apply_operations(["a", "b", "c"], [], 2, 10)
    with pytest.raises(ValueError, match="over its caps"):
        apply_operations(["abcdef"], [], 2, 3)


def test_render_lessons() -> None:
    assert render_lessons([]) == ""
    assert render_lessons(["a", "b c"]) == "1. a\n2. b c"


# --------------------------------------------------------------------------------------------
# hypothesis fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLEAN = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 ,;!?"), min_size=1,
                max_size=30).map(lambda t: " ".join(t.split())).filter(lambda t: t[:1].isalnum())
ANY_TEXT = st.text(max_size=60)
OPS = st.lists(st.one_of(
    st.builds(Operation, st.just("add"), st.none(), ANY_TEXT),
    st.builds(Operation, st.just("revise"), st.integers(-2, 12), ANY_TEXT),
    st.builds(Operation, st.just("remove"), st.integers(-2, 12)),
    st.just(Operation("none")),
), max_size=14)


@st.composite
def lesson_lists(draw: st.DrawFn) -> tuple[list[str], int, int]:
    """A valid starting list (what the applier itself produces) with its caps."""
    max_lessons = draw(st.integers(1, 8))
    max_chars = draw(st.integers(1, 40))
    raw = draw(st.lists(ANY_TEXT, max_size=max_lessons))
    lessons: list[str] = []
    for text in raw:
        t = normalize_lesson(text, max_chars)
        if t and all(" ".join(t.lower().split()) != " ".join(x.lower().split()) for x in lessons):
            lessons.append(t)
    return lessons, max_lessons, max_chars


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def check_edit(lessons: list[str], ops: list[Operation], max_lessons: int, max_chars: int) -> None:
    before = list(lessons)
    res = apply_operations(lessons, ops, max_lessons, max_chars)
    assert lessons == before  # input untouched
    out = res.lessons
    assert len(out) <= max_lessons
    assert all(0 < len(x) <= max_chars and "\n" not in x and x == x.strip() for x in out)
    assert len({_key(x) for x in out}) == len(out)  # no duplicates
    assert res.applied + res.rejected + res.none == len(ops)
    assert len(out) == len(lessons) - res.removed + res.added
    if not any(op.kind in ("add", "revise", "remove") for op in ops) or res.applied == 0:
        assert out == lessons  # NONE / nothing accepted: identical
    # only operations change the list: every lesson is an untouched original (in its order) or an op's text
    op_texts = {normalize_lesson(op.text, max_chars) for op in ops if op.kind in ("add", "revise")}
    originals = [x for x in out if x in lessons and x not in op_texts]
    assert originals == [x for x in lessons if x in originals]
    assert all(x in lessons or x in op_texts for x in out)


@FUZZ
@given(ANY_TEXT)
def test_fuzz_parser_never_raises(text: str) -> None:
    parsed = parse_reply(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(parsed.operations) + parsed.ignored <= len(lines)
    for op in parsed.operations:
        assert op.kind in ("add", "revise", "remove", "none")
        assert (op.index is None) == (op.kind in ("add", "none"))
        assert "\n" not in op.text and (op.text != "") == (op.kind in ("add", "revise"))


@FUZZ
@given(lesson_lists(), OPS)
def test_fuzz_apply_invariants(start: tuple[list[str], int, int], ops: list[Operation]) -> None:
    check_edit(list(start[0]), ops, start[1], start[2])


@FUZZ
@given(lesson_lists(), st.lists(st.one_of(ANY_TEXT, st.sampled_from(
    ["ADD: x", "REVISE 1: y", "REMOVE 1", "REMOVE 2", "NONE", "- add: z", "REVISE 9: w"])), max_size=8))
def test_fuzz_parse_then_apply(start: tuple[list[str], int, int], lines: list[str]) -> None:
    check_edit(list(start[0]), parse_operations("\n".join(lines)), start[1], start[2])


@FUZZ
@given(st.one_of(st.builds(Operation, st.just("add"), st.none(), CLEAN),
                 st.builds(Operation, st.just("revise"), st.integers(0, 10**6), CLEAN),
                 st.builds(Operation, st.just("remove"), st.integers(0, 10**6)),
                 st.just(Operation("none"))),
       st.sampled_from(["", "- ", "* ", "1. ", "  ", "• "]), st.booleans())
def test_fuzz_operation_round_trip(op: Operation, bullet: str, lower: bool) -> None:
    line = bullet + (str(op).lower() if lower else str(op))
    [back] = parse_operations(line)
    assert (back.kind, back.index) == (op.kind, op.index)
    assert back.text == (op.text.lower() if lower else op.text)


# --------------------------------------------------------------------------------------------
# curator lifecycles


FIRST = "ADD: code 1 moves Right\nI think this is right.\n- add: avoid holes"
SECOND = "REVISE 2: holes end the task\nREMOVE 7\nADD: Code 1  moves right\nREMOVE 2"


def two_step_curator(req: GenRequest) -> str:
    shown = shown_lessons(req)
    return FIRST if shown == "(none yet)" else SECOND if shown.endswith("2. avoid holes") else "NONE"


def test_curator_lifecycle_lessons_prompts_and_experiences() -> None:
    cfg = cfg_(hint_length_coef=0.0)  # byte "tokens": these replies are long
    pack = hand_pack(["SFFFG"], k=3)
    be = CuratorScripted(two_step_curator)
    [res] = LifecycleRunner(be, cfg).run([Job(ENV, pack, 0)])
    reqs = be.requests
    assert re.fullmatch(r"S+CS+CS+", "".join(kind(r) for r in reqs))
    assert res.mode == "curator"
    e0, e1, e2 = res.episodes
    l1 = ["code 1 moves Right", "avoid holes"]
    l2 = ["code 1 moves Right", "holes end the task"]
    assert [e.hints_in for e in res.episodes] == ["", render_lessons(l1), render_lessons(l2)]
    assert [e.hints_out for e in res.episodes] == [render_lessons(l1), render_lessons(l2), None]
    assert e0.curator_ops == {"added": 2, "revised": 0, "removed": 0, "rejected": 0, "none": 0, "ignored": 1}
    assert e1.curator_ops == {"added": 0, "revised": 1, "removed": 0, "rejected": 3, "none": 0, "ignored": 0}
    assert e2.curator_ops is None
    assert [(e.hint_valid, e.hint_reward) for e in (e0, e1)] == [(True, 0.0), (True, 0.0)]
    assert res.task_rewards == [1.0, 1.0, 1.0]
    # every solve turn of task k shows exactly the rendered lessons above the map
    curator_reqs = [r for r in reqs if kind(r) == "C"]
    for exp, req in zip(res.experiences, reqs, strict=True):
        assert exp.prompt_ids == byte_ids(render(req))  # token-exact: the prompt the engine got
        assert exp.completion_ids == byte_ids(exp.text) and len(exp.logprobs) == len(exp.completion_ids)
        assert exp.loss_mask == [0] * len(exp.prompt_ids) + [1] * len(exp.completion_ids)
        if exp.episode_type == "solve":
            obs = first_obs(pack, exp.position)
            user = req.messages[1]["content"]
            ep = res.episodes[exp.position]
            assert user == (obs if exp.position == 0 else f"Hints:\n{ep.hints_in}\n\n{obs}")
            assert own_reward(res, exp) == ep.reward
        else:
            assert kind(req) == "C" and req.reply_prefix == PREFIX
            ep = res.episodes[exp.position]
            shown = l1 if exp.position == 1 else []
            assert req.messages == curator_messages(ENV.system_prompt, shown, first_obs(pack, exp.position),
                                                    ep.turns, ep.env_reward, ep.feedback)
            assert own_reward(res, exp) == ep.hint_reward
    assert [shown_lessons(r) for r in curator_reqs] == ["(none yet)", render_lessons(l1)]
    assert curator_reqs[0].messages[1]["content"].endswith(CURATOR_INSTRUCTIONS)
    assert [e.episode_type for e in res.experiences].count("update") == 2


@pytest.mark.parametrize(("reply", "valid", "reward"), [
    ("I would rather not.", False, -0.25),    # no operation, not NONE: penalised
    ("REMOVE 1", False, -0.25),               # an operation, but rejected (the list is empty)
    ("NONE", True, 0.0),                      # explicit no-op: fine
    ("ADD: code 1 moves Right", True, 0.0),
])
def test_curator_reward_and_list_kept(reply: str, valid: bool, reward: float) -> None:
    cfg = cfg_(pack_size=2, hint_penalty_coef=0.25)
    [res] = LifecycleRunner(CuratorScripted(lambda req: reply), cfg).run([Job(ENV, hand_pack(["SFFFG"], k=2), 0)])
    e0, e1 = res.episodes
    assert (e0.hint_valid, e0.hint_reward) == (valid, reward)
    [upd] = [m for m in res.model_episodes if m.episode_type == "update"]
    assert upd.own_reward == reward
    expected = "1. code 1 moves Right" if reply.startswith("ADD") else ""  # nothing else changes the list
    assert e0.hints_out == e1.hints_in == expected
    assert res.task_rewards == [1.0, 1.0]  # the penalty is the update's own reward only


def test_curator_reply_length_ramp() -> None:
    reply = "ADD: " + "x" * 25  # 30 byte tokens
    cfg = cfg_(pack_size=2, hint_length_coef=0.2, hint_length_start=10, hint_length_end=50)
    [res] = LifecycleRunner(CuratorScripted(lambda req: reply), cfg).run([Job(ENV, hand_pack(["SFFFG"], k=2), 0)])
    assert res.episodes[0].hint_valid and res.episodes[0].hint_reward == pytest.approx(-0.2 * 0.5)


def test_lessons_capped_over_a_long_pack() -> None:
    counter = {"n": 0}

    def adder(req: GenRequest) -> str:
        counter["n"] += 1
        return f"ADD: lesson {counter['n']}a and more words\nADD: lesson {counter['n']}b"

    cfg = cfg_(pack_size=6, curator_max_lessons=3, curator_max_chars=9)
    [res] = LifecycleRunner(CuratorScripted(adder), cfg).run([Job(ENV, hand_pack(["SFG"], k=6), 0)])
    # lessons cut at 9 characters; the list stops at 3 (later ADDs rejected, nothing dropped)
    assert res.episodes[-1].hints_in == "1. lesson 1a\n2. lesson 1b\n3. lesson 2a"
    assert [e.curator_ops["added"] for e in res.episodes[:-1]] == [2, 1, 0, 0, 0]  # type: ignore[index]
    assert [e.curator_ops["rejected"] for e in res.episodes[:-1]] == [0, 1, 2, 2, 2]  # type: ignore[index]
    assert res.episodes[1].hint_valid and not res.episodes[2].hint_valid


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(ANY_TEXT, st.sampled_from(["ADD: a", "ADD: b", "REVISE 1: c", "REMOVE 1",
                                                                  "NONE"])), max_size=4), min_size=3, max_size=3))
def test_fuzz_curator_lifecycle_lists_follow_operations(replies: list[list[str]]) -> None:
    """Whatever the curator says, the next task's hints are exactly the list its parsed operations
    produce, replayed here; a reply without accepted operations leaves the hints identical."""
    texts = ["\n".join(r) for r in replies]
    cfg = cfg_(pack_size=4, curator_max_lessons=3, curator_max_chars=12)
    be = CuratorScripted(lambda req: texts[sum(kind(r) == "C" for r in be.requests) - 1])
    [res] = LifecycleRunner(be, cfg).run([Job(ENV, hand_pack(["SFG"], k=4), 0)])
    lessons: list[str] = []
    for ep, text in zip(res.episodes[:-1], texts, strict=True):
        assert ep.hints_in == render_lessons(lessons)
        edit = apply_operations(lessons, parse_operations(PREFIX + text), 3, 12)
        if edit.applied == 0:
            assert edit.lessons == lessons
        lessons = edit.lessons
        assert ep.hints_out == render_lessons(lessons)
    assert res.episodes[-1].hints_in == render_lessons(lessons)


# --------------------------------------------------------------------------------------------
# modes: Ralph loops with any context, result names, the episode hook


def test_result_mode_names() -> None:
    assert [result_mode(m) for m in ("cod", "nohint", "curator")] == ["cod", "nohint", "curator"]
    assert [result_mode(m, "first") for m in ("cod", "nohint", "curator")] == ["ralph", "ralph-nohint",
                                                                                "ralph-curator"]
    assert RolloutConfig(mode="nohint", ralph="expand").result_mode == "ralph-nohint"  # allowed now


@pytest.mark.parametrize(("mode", "ralph", "name", "kinds"), [
    ("nohint", "first", "ralph-nohint", r"S+S+S+"),
    ("curator", "first", "ralph-curator", r"S+CS+CS+"),
    ("cod", "first", "ralph", r"S+US+US+"),
    ("curator", "expand", "ralph-curator", r"S+CS+CS+"),
    ("curator", "none", "curator", r"S+CS+CS+"),
])
def test_ralph_with_every_context(mode: str, ralph: str, name: str, kinds: str) -> None:
    cfg = cfg_(mode=mode, ralph=ralph)
    pack = ENV.sample_pack("test", 0, 0, 3)
    jobs = make_jobs([(ENV, pack)], cfg)
    for job in jobs:
        be = CuratorScripted(lambda req: "ADD: try code 1 first")
        [res] = LifecycleRunner(be, cfg).run([job])
        assert res.mode == name
        assert re.fullmatch(kinds, "".join(kind(r) for r in be.requests))
        hints_in = [e.hints_in for e in res.episodes]
        if mode == "nohint":  # independent attempts: no context at all
            assert hints_in == ["", "", ""] and all(e.hints_out is None for e in res.episodes)
        elif mode == "curator":
            assert hints_in == ["", "1. try code 1 first", "1. try code 1 first"]
        if ralph != "none":
            assert all(t.spec == job.pack.tasks[0].spec for t in job.pack.tasks)  # one task, K attempts


def test_on_episode_hook_per_job_after_update() -> None:
    cfg = cfg_(pack_size=3, repeats=2, max_concurrent=4)
    packs = [hand_pack(["SFFFG"], k=3, pack_id=f"p{i}") for i in range(2)]
    jobs = make_jobs([(ENV, p) for p in packs], cfg)
    seen: list[tuple[int, int, str | None]] = []
    records: dict[int, list[EpisodeRecord]] = {}

    def hook(i: int, rec: EpisodeRecord) -> None:
        seen.append((i, rec.position, rec.hints_out))  # hints_out as it is at call time
        records.setdefault(i, []).append(rec)

    be = CuratorScripted(two_step_curator)
    results = LifecycleRunner(be, cfg).run(jobs, on_episode=hook)
    assert sorted(records) == list(range(len(jobs)))
    for i, res in enumerate(results):
        assert [r.position for r in records[i]] == [0, 1, 2]
        assert all(a is b for a, b in zip(records[i], res.episodes, strict=True))  # the very records of the result
        assert [h for j, _, h in seen if j == i] == [e.hints_out for e in res.episodes]  # final when called
    assert len(be.calls[0]) == 4  # still batched across jobs


def test_on_episode_hook_nohint_and_play_lifecycle_compatible() -> None:
    cfg = cfg_(mode="nohint", pack_size=2)
    seen: list[tuple[int, int]] = []
    LifecycleRunner(CuratorScripted(lambda r: "NONE"), cfg).run(
        [Job(ENV, hand_pack(["SFG"], k=2), 0)], on_episode=lambda i, rec: seen.append((i, rec.position)))
    assert seen == [(0, 0), (0, 1)]
    # play_lifecycle keeps its positional signature; an unknown mode is a clear error
    gen = play_lifecycle(ENV, hand_pack(["SFG"], k=1), 0, cfg, "nohint", None, 7)
    assert next(gen).seed == 7
    with pytest.raises(ValueError, match="'curator'"):
        next(play_lifecycle(ENV, hand_pack(["SFG"], k=1), 0, cfg, "sometimes"))


# --------------------------------------------------------------------------------------------
# evaluations that compare contexts


def _eval(tmp_path: Path, **kw: object) -> tuple[dict, list[dict]]:
    cfg = EvalConfig(env="frozenlake", packs=3, seed=0, **kw)  # type: ignore[arg-type]
    be = CuratorScripted(lambda req: "ADD: code 1 moves Right", solve=lambda req: "1</answer>")
    evaluate(be, cfg, tmp_path, console=Console(file=io.StringIO()), progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    return results, lines


def test_evaluate_compares_three_contexts(tmp_path: Path) -> None:
    results, lines = _eval(tmp_path, contexts=["cod", "nohint", "curator"],
                           rollout=RolloutConfig(pack_size=2, repeats=1))
    s = results["summary"]
    assert s["modes"] == ["cod", "curator", "nohint"]
    assert sorted(s["mode_diffs"]) == ["cod-nohint", "curator-nohint"]
    assert all(d["paired"] for d in s["mode_diffs"]["curator-nohint"])
    assert results["meta"]["config"]["contexts"] == ["cod", "nohint", "curator"]
    assert [ln["mode"] for ln in lines] == ["cod"] * 3 + ["nohint"] * 3 + ["curator"] * 3
    cur = [ln for ln in lines if ln["mode"] == "curator"]
    assert all(ln["episodes"][0]["curator_ops"]["added"] == 1 for ln in cur)
    assert all(ln["episodes"][1]["hints_in"] == "1. code 1 moves Right" for ln in cur)
    header = (tmp_path / "episodes.csv").read_text().splitlines()[0]
    assert header.endswith("curator_applied,curator_rejected")


def test_evaluate_ralph_contexts_against_ralph_nohint(tmp_path: Path) -> None:
    results, _ = _eval(tmp_path, contexts=["curator", "cod"], baseline=True,
                       rollout=RolloutConfig(pack_size=2, repeats=1, ralph="first"))
    s = results["summary"]
    assert s["modes"] == ["ralph", "ralph-curator", "ralph-nohint"]
    assert sorted(s["mode_diffs"]) == ["ralph-curator-ralph-nohint", "ralph-ralph-nohint"]
    assert all(d["paired"] and d["n_packs"] == 3 for d in s["mode_diffs"]["ralph-ralph-nohint"])


# --------------------------------------------------------------------------------------------
# slow: the real embedded model


@pytest.mark.slow
def test_real_model_curator_evaluation(embedded_backend: Backend, tmp_path: Path) -> None:
    """A tiny curator evaluation end to end on SmolLM2-135M: report written, lessons only from operations."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = EvalConfig(env="frozenlake", env_params={"min_size": 4, "max_size": 4, "max_env_steps": 2,
                                                       "max_agent_steps": 2},
                         packs=1, seed=0, contexts=["curator", "nohint"],
                         rollout=RolloutConfig(pack_size=2, repeats=2, max_new_tokens_solve=8,
                                               max_new_tokens_update=24, hint_length_start=16,
                                               hint_length_end=24))
        summary = evaluate(embedded_backend, cfg, tmp_path, console=Console(file=io.StringIO()), progress=False)
    finally:
        torch.set_num_threads(before)
    assert summary.modes == ["curator", "nohint"] and "curator-nohint" in summary.mode_diffs
    lines = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    cur = [ln for ln in lines if ln["mode"] == "curator"]
    assert len(cur) == 2
    for ln in cur:
        e0, e1 = ln["episodes"]
        ops = e0["curator_ops"]
        assert set(ops) == {"added", "revised", "removed", "rejected", "none", "ignored"}
        assert e0["hints_out"] == e1["hints_in"]
        # the list starts empty, so only ADDs can have changed it
        assert len([x for x in e1["hints_in"].splitlines() if x]) == ops["added"]
        assert e0["hint_valid"] == (ops["added"] + ops["revised"] + ops["removed"] > 0 or ops["none"] > 0)
    assert (tmp_path / "reward_by_position.png").read_bytes()[:4] == b"\x89PNG"
