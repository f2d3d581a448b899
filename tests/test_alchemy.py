"""Tests of the Alchemy-Random environment and its scripted agents."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.envs import Pack, Task, make_env
from codrl.envs.alchemy import (CHANCE_REWARD, FORMAT_HINT, AlchemyRandom, base_need, parse_pair,
                                plan_crafts)
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.alchemy import parse_view
from codrl.errors import CodrlError
from codrl.eval.checklist import play_pack, reward_matrix

# A hand-made world:  tier 0: earth, fire, water | tier 1: ash (dead end), mud, steam | tier 2: golem
WORLD = {"tiers": [["earth", "fire", "water"], ["ash", "mud", "steam"], ["golem"]],
         "recipes": [["fire", "water", "steam"], ["earth", "water", "mud"], ["fire", "fire", "ash"],
                     ["mud", "steam", "golem"]],
         "noise": ["ash"]}
STOCK = {"earth": 2, "fire": 3, "water": 2}


def reply(a: str, b: str) -> str:
    return f"<answer>{a} + {b}</answer>"


def episode(env: AlchemyRandom | None = None, target: str = "golem", stock: dict[str, int] | None = None):
    env = env or AlchemyRandom()
    spec: dict = {"target": target}
    if env.limited_materials:
        spec["stock"] = dict(stock or STOCK)
    task = Task(task_id="t/0", position=0, spec=spec)
    pack = Pack(pack_id="t", env=env.name, split="train", world=json.loads(json.dumps(WORLD)), tasks=(task,))
    ep = env.start(pack, task)
    ep.reset()
    return ep


# -- packs, worlds, splits ----------------------------------------------------------------------
PACK_SNIPPET = ("import json; from codrl.envs import make_env; e = make_env({name!r}); "
                "p = e.sample_pack('test', 5, 3, 4); "
                "print(json.dumps([p.pack_id, p.world, [[t.task_id, t.spec] for t in p.tasks]], sort_keys=True))")


@pytest.mark.parametrize("name", ["alchemy", "alchemy_hard"])
def test_pack_determinism(name):
    env = make_env(name)
    a = env.sample_pack("test", 5, 3, 4)
    assert a == make_env(name).sample_pack("test", 5, 3, 4)
    assert a.world != env.sample_pack("test", 5, 4, 4).world
    text = json.dumps([a.pack_id, a.world, [[t.task_id, t.spec] for t in a.tasks]], sort_keys=True)
    # A fresh interpreter with another hash seed draws the same pack: no salted hash() anywhere.
    for hash_seed in ("12345",):
        out = subprocess.run([sys.executable, "-c", PACK_SNIPPET.format(name=name)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=60, check=True)
        assert out.stdout.strip() == text


def test_tasks_share_world_and_packs_differ():
    env = make_env("alchemy")
    worlds = set()
    for i in range(30):
        pack = env.sample_pack("train", 1, i, 4)
        recipes = {json.dumps(sorted(env.start(pack, t).recipes.items())) for t in pack.tasks}
        assert len(recipes) == 1  # every task of the pack plays the same recipe graph
        worlds.add(json.dumps(pack.world, sort_keys=True))
    assert len(worlds) == 30


def test_split_disjoint():
    env = make_env("alchemy")
    worlds, keys, ids = {}, {}, {}
    for split in ("train", "test"):
        packs = [env.sample_pack(split, 0, i, 4) for i in range(100)]
        assert all(p.split == split and env.split_of(p.world, {}) == split for p in packs)
        worlds[split] = {json.dumps(p.world, sort_keys=True) for p in packs}
        keys[split] = {env.task_key(p.world, t.spec) for p in packs for t in p.tasks}
        ids[split] = {t.task_id for p in packs for t in p.tasks}
        assert len(worlds[split]) == 100
    assert not worlds["train"] & worlds["test"]
    assert not keys["train"] & keys["test"]
    assert not ids["train"] & ids["test"]


@pytest.mark.parametrize("name", ["alchemy", "alchemy_hard"])
def test_world_structure(name):
    env = make_env(name)
    seen_tiers, seen_base, seen_noise, seen_multi = set(), set(), 0, 0
    for i in range(60):
        pack = env.sample_pack("train", 2, i, 4)
        world = pack.world
        json.dumps(world), json.dumps([t.spec for t in pack.tasks])  # JSON-serialisable
        tiers, recipes, noise = world["tiers"], world["recipes"], set(world["noise"])
        names = [e for tier in tiers for e in tier]
        assert len(names) == len(set(names))
        assert all(re.fullmatch(r"[a-z]{3,5}", e) for e in names)
        assert all(tier == sorted(tier) and tier for tier in tiers)
        seen_tiers.add(len(tiers))
        seen_base.add(len(tiers[0]))
        tier_of = {e: t for t, es in enumerate(tiers) for e in es}
        pairs = [(a, b) for a, b, _ in recipes]
        assert len(pairs) == len(set(pairs)) and all(a <= b for a, b in pairs)  # no pair used twice
        per_element: dict[str, int] = {}
        for a, b, r in recipes:
            assert tier_of[a] == tier_of[b] == tier_of[r] - 1
            assert a not in noise and b not in noise  # dead ends are never an ingredient
            per_element[r] = per_element.get(r, 0) + 1
        assert sorted(per_element) == sorted(names[len(tiers[0]):])  # every non-base element has a recipe
        lo, hi = env.recipes_per_element
        assert all(lo <= c <= hi for c in per_element.values())
        seen_multi += any(c > 1 for c in per_element.values())
        seen_noise += len(noise)
        for t in range(1, len(tiers)):
            assert any(e not in noise for e in tiers[t])
        for task in pack.tasks:
            target = task.spec["target"]
            assert tier_of[target] >= 1 and target not in noise
            plan = plan_crafts(recipes, {b: None for b in tiers[0]}, target, limited=env.limited_materials)
            assert plan and plan[-1][2] == target and not {x for step in plan for x in step} & noise
    assert seen_tiers == {3, 4}
    if name == "alchemy":
        assert seen_base == {3, 4} and seen_noise == 0 and seen_multi == 0
    else:
        assert seen_base == {4, 5, 6} and seen_noise > 0 and seen_multi > 0


def test_targets_weighted_toward_higher_tiers():
    env = make_env("alchemy")
    by_tier = np.zeros(4)
    for i in range(150):
        pack = env.sample_pack("train", 3, i, 4)
        tier_of = {e: t for t, es in enumerate(pack.world["tiers"]) for e in es}
        for t in pack.tasks:
            by_tier[tier_of[t.spec["target"]]] += 1
    assert by_tier[0] == 0 and by_tier[2] > by_tier[1] and by_tier[3] > 0


# -- scripted levels ------------------------------------------------------------------------------
# Train packs are cheaper to draw (the split is a property of the world: 4 in 5 worlds are train).
@pytest.mark.parametrize("name", ["alchemy", "alchemy_hard"])
def test_oracle_and_chance(name):
    env = make_env(name)
    agents = agents_for(name)
    oracle = reward_matrix(env, agents.oracle, packs=100, split="train")
    print(f"{name}: oracle mean reward {oracle.mean():.3f}")  # measured: easy 0.973, hard 0.978
    assert (oracle > 0).all() and oracle.mean() > 0.95  # always solved, in a few rounds
    rnd = reward_matrix(env, agents.random, packs=400, split="train")
    print(f"{name}: random mean reward {rnd.mean():.3f} (chance_reward {env.chance_reward})")
    assert env.chance_reward == CHANCE_REWARD[env.variant]
    # 1600 tasks with a per-task std of ~0.4 (correlated within a pack): standard error ~0.012.
    assert abs(rnd.mean() - env.chance_reward) < 0.05


@pytest.mark.parametrize("name,packs,min_gain,max_control", [("alchemy", 400, 0.15, 0.1),
                                                              ("alchemy_hard", 200, 0.2, 0.15)])
def test_learner_improves_memoryless_does_not(name, packs, min_gain, max_control):
    # Measured on 800 test packs: easy learner gain 0.30 (per-pack sd 0.42), memoryless 0.01 (sd 0.52);
    # hard learner gain 0.37 (sd 0.58), memoryless 0.01 (sd 0.62). With these pack counts the
    # bounds sit 3.4-7 standard errors away. Here (train packs): easy 0.69 -> 0.97 vs 0.69 -> 0.70,
    # hard 0.41 -> 0.76 vs 0.41 -> 0.41.
    env = make_env(name)
    learner = agents_for(name).learner
    with_hints = reward_matrix(env, learner, packs=packs, split="train")
    without = reward_matrix(env, learner, packs=packs, split="train", use_hints=False)
    gain = with_hints[:, -1].mean() - with_hints[:, 0].mean()
    control = without[:, -1].mean() - without[:, 0].mean()
    print(f"{name}: learner gain {gain:.3f}, memoryless gain {control:.3f}")
    assert gain > min_gain
    assert abs(control) < max_control


def test_learner_hints_carry_recipes_and_failures():
    env = make_env("alchemy")
    pack = env.sample_pack("test", 0, 0, 2)
    seen: list[str] = []
    learner = agents_for("alchemy").learner

    def spy(p, rng):
        agent = learner(p, rng)
        act = agent.act
        agent.act = lambda hints, obs: (seen.append(hints), act(hints, obs))[1]
        return agent

    play_pack(env, pack, spy, np.random.default_rng(0))
    hints = seen[-1]
    true = {(a, b): r for a, b, r in pack.world["recipes"]}
    lines = hints.splitlines()
    assert lines and all(re.fullmatch(r"[a-z]+ \+ [a-z]+ -> [a-z]+", ln) for ln in lines)
    for ln in lines:
        a, _, b, _, r = ln.split()
        assert true.get((a, b), "nothing") == r


# -- transitions, rewards, observation ------------------------------------------------------------
def test_reward_formula_by_hand():
    ep = episode()
    res = ep.step(reply("fire", "water"))
    assert res.valid and not res.done and res.reward == 0.0
    assert res.feedback == "fire + water -> steam (new!)."
    assert res.info["event"] == "crafted" and res.info["result"] == "steam" and res.info["rounds"] == 1
    res = ep.step(reply("fire", "earth"))
    assert res.feedback == "nothing happened: no recipe for fire + earth."
    assert res.info["event"] == "nothing" and not res.done
    res = ep.step(reply("water", "earth"))
    assert res.feedback == "water + earth -> mud (new!)."
    res = ep.step(reply("steam", "mud"))
    assert res.done and res.valid and res.observation is None and res.info["event"] == "solved"
    assert res.reward == pytest.approx(1 - 0.1 * 4 / 8)
    assert "You made the target golem in 4 rounds. Task solved!" in res.feedback
    after = ep.step(reply("fire", "water"))
    assert after.done and after.reward == 0.0 and after.info["event"] == "over"
    ep = episode(target="steam")
    assert ep.step(reply("water", "fire")).reward == pytest.approx(1 - 0.1 / 8)


def test_round_limit_and_recrafting():
    ep = episode()
    assert ep.step(reply("fire", "water")).feedback == "fire + water -> steam (new!)."
    assert ep.step(reply("fire", "water")).feedback == "fire + water -> steam."
    for _ in range(5):
        assert not ep.step(reply("fire", "earth")).done
    res = ep.step(reply("earth", "earth"))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "timeout"
    assert "used all 8 rounds without making golem. Task failed." in res.feedback


def test_observation_easy():
    ep = episode()
    obs = ep.reset()
    assert obs.startswith("Round 1 of 8. Target: make golem (a tier 2 element).")
    assert "  tier 0 (base): earth, fire, water\n  tier 1: ash, mud, steam\n  tier 2: golem" in obs
    assert "Inventory (unlimited supply of each): earth, fire, water" in obs
    assert "Last outcome: none yet" in obs and FORMAT_HINT in obs and "<answer>A + B</answer>" in obs
    res = ep.step(reply("fire", "water"))
    assert res.observation.startswith("Round 2 of 8.")
    assert "Inventory (unlimited supply of each): earth, fire, water, steam" in res.observation
    assert "Last outcome: fire + water -> steam (new!)." in res.observation
    view = parse_view(res.observation)
    assert view is not None and view.target == "golem" and view.target_tier == 2
    assert view.tiers == WORLD["tiers"] and view.inventory == dict.fromkeys(["earth", "fire", "water", "steam"])


def test_hard_materials_consumed():
    env = make_env("alchemy_hard")
    assert env.max_turns == env.max_rounds == 15 and env.limited_materials
    ep = episode(env)
    assert "Round 1 of 15." in ep.reset()
    assert "Inventory (each combination uses up one unit of each input): earth x2, fire x3, water x2" in ep.reset()
    res = ep.step(reply("fire", "water"))
    assert res.feedback == "fire + water -> steam (new!) (1 fire and 1 water used up)."
    assert res.info["inventory"] == {"earth": 2, "fire": 2, "water": 1, "steam": 1}
    assert "earth x2, fire x2, water x1, steam x1" in res.observation
    res = ep.step(reply("fire", "earth"))  # a failed attempt consumes its inputs too
    assert res.feedback == "nothing happened: no recipe for fire + earth (1 fire and 1 earth used up)."
    assert res.info["inventory"] == {"earth": 1, "fire": 1, "water": 1, "steam": 1}
    bad = ep.step(reply("steam", "steam"))  # only one steam
    assert bad.done and not bad.valid and bad.reward == 0.0
    assert "needs 2 units of steam, you have 1" in bad.feedback

    ep = episode(env)
    ep.step(reply("fire", "fire"))
    assert ep.inventory["fire"] == 1 and ep.inventory["ash"] == 1
    ep.step(reply("water", "earth"))
    ep.step(reply("fire", "water"))
    res = ep.step(reply("mud", "steam"))
    assert res.done and res.reward == pytest.approx(1 - 0.1 * 4 / 15)

    ep = episode(env, stock={"earth": 20, "fire": 20, "water": 20})
    for _ in range(14):
        assert not ep.step(reply("fire", "earth")).done
    res = ep.step(reply("fire", "earth"))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "timeout"
    assert "used all 15 rounds" in res.feedback and res.info["inventory"]["fire"] == 5

    ep = episode(env, stock={"earth": 1, "fire": 3, "water": 0})
    assert "water x0" in ep.reset()
    assert "water is not in your inventory" in ep.step(reply("water", "fire")).feedback  # none left
    ep = episode(env, stock={"earth": 1, "fire": 3, "water": 0})
    res = ep.step(reply("fire", "earth"))
    assert not res.done and res.info["inventory"] == {"earth": 0, "fire": 2, "water": 0}
    assert ep.step(reply("fire", "earth")).valid is False
    ep = episode(env, stock={"earth": 1, "fire": 2, "water": 0})
    assert not ep.step(reply("fire", "fire")).done  # -> ash; one earth and one ash left
    res = ep.step(reply("earth", "ash"))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "exhausted"
    assert "Out of materials" in res.feedback


def test_hard_stock_covers_one_solution_path():
    env = make_env("alchemy_hard")
    for i in range(40):
        pack = env.sample_pack("test", 4, i, 4)
        base = pack.world["tiers"][0]
        for t in pack.tasks:
            need = base_need(pack.world, t.spec["target"])
            stock = t.spec["stock"]
            assert sorted(stock) == sorted(base)
            for b in base:
                assert 1.5 * max(1, need.get(b, 0)) <= stock[b] <= np.ceil(2.0 * max(1, need.get(b, 0)))


# -- parsing -------------------------------------------------------------------------------------
def test_parse_tolerance():
    assert parse_pair("<answer>fire + water</answer>") == ("fire", "water")
    assert parse_pair("<ANSWER>  Fire+WATER \n</Answer >") == ("fire", "water")
    assert parse_pair("I think fire and water make steam. <answer>fire + water</answer>") == ("fire", "water")
    assert parse_pair("<answer>fire + fire</answer> done") == ("fire", "fire")
    env = AlchemyRandom()
    assert env.reply_prefix == "<answer>" and env.stop_strings == ("</answer>",)
    # the lifecycle passes prefix + model text; the backends keep the stop string in the text
    assert parse_pair(env.reply_prefix + "fire + water</answer>") == ("fire", "water")
    assert "<answer>A + B</answer>" in env.system_prompt


MALFORMED = [
    "", "fire + water", "<answer>fire + water", "fire + water</answer>", "</answer>fire + water<answer>",
    "<answer></answer>", "<answer>fire water</answer>", "<answer>fire + water + earth</answer>",
    "<answer>fire +</answer>", "<answer> + </answer>", "<answer>fire + water</answer><answer>fire + water</answer>",
    "<answer><answer>fire + water</answer></answer>", "Format: <answer>A + B</answer>. <answer>fire + water</answer>",
    "<answer>fire + water</answer></answer>", "<answer>foo + bar</answer>", "<answer>steam + fire</answer>",
    "<answer>golem + golem</answer>", "<answer>fire, water</answer>", "<answer>fire + water.</answer>",
    "<answer>\U0001f525 + \U0001f4a7</answer>", "<answer>\ufb01re + water</answer>",
    "<answer>\u212aire + water</answer>", "<an\u017fwer>fire + water</answer>",
    "<answer>fire\u00a0+ wat\u00e9r</answer>", "<answer>" + "fire + water" * 50 + "</answer>",
    "x" * 1_000_000, "<answer>" * 125_000, "</answer>" * 100_000, "<answer" + " " * 1_000_000,
    "<answer>" + "a" * 1_000_000 + "</answer>", "<answer>fire +" + " " * 1_000_000 + "water</answer>",
    "<answer>fire + water</answer>" * 40_000, "<" * 1_000_000, "\U0001f525" * 250_000, None,
]


@pytest.mark.parametrize("bad", MALFORMED, ids=[repr(b)[:40] for b in MALFORMED])
def test_malformed_replies(bad):
    ep = episode()
    t0 = time.perf_counter()
    res = ep.step(bad)
    assert time.perf_counter() - t0 < 1.0
    assert res.done and not res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "invalid"
    assert "Expected exactly one <answer>A + B</answer>" in res.feedback and "reward 0" in res.feedback


def reference_parse(text: str) -> tuple[str, str] | None:
    """An independent, simple statement of the answer format, to check the parser against."""
    opens = re.findall(r"<answer[ \t\n\r\f\v]*>", text, re.IGNORECASE | re.ASCII)
    closes = re.findall(r"</answer[ \t\n\r\f\v]*>", text, re.IGNORECASE | re.ASCII)
    if len(opens) != 1 or len(closes) != 1:
        return None
    _, rest = re.split(r"<answer[ \t\n\r\f\v]*>", text, flags=re.IGNORECASE | re.ASCII)
    inside = re.split(r"</answer[ \t\n\r\f\v]*>", rest, flags=re.IGNORECASE | re.ASCII)
    if len(inside) != 2:  # the closing tag comes first
        return None
    content = inside[0]
    parts = content.split("+")
    if len(parts) != 2:
        return None
    names = [p.strip(" \t\n\r\f\v") for p in parts]
    if not all(n and n.isascii() and n.isalpha() for n in names):
        return None
    return names[0].lower(), names[1].lower()


PIECES = ["<answer>", "</answer>", "<ANSWER >", "</Answer>", "fire", "Water", "earth", "steam", "foo", " + ", "+",
          " ", "\n", "\t", "x", "\u00e9", "\U0001f525", "<", ">", "/", "answer", "\u212a", "ire", ""]
replies = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(PIECES), max_size=12).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies)
def test_step_property(text):
    ep = episode()
    t0 = time.perf_counter()
    res = ep.step(text)
    assert time.perf_counter() - t0 < 0.5
    expected = reference_parse(text)
    if expected is not None and all(x in ("earth", "fire", "water") for x in expected):
        assert res.valid and not res.done and res.info["pair"] == list(expected) and res.info["rounds"] == 1
    else:
        assert not res.valid and res.done and res.reward == 0.0 and res.observation is None
        assert "<answer>A + B</answer>" in res.feedback


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_step_never_raises_on_decoded_bytes(raw):
    res = episode(make_env("alchemy_hard")).step(raw.decode("utf-8", errors="replace"))
    assert isinstance(res.valid, bool) and (res.valid or (res.done and res.reward == 0.0))


# -- construction --------------------------------------------------------------------------------
def test_variants_and_defaults():
    easy, hard = make_env("alchemy"), make_env("alchemy_hard")
    assert (easy.name, easy.variant, easy.max_turns, easy.limited_materials) == ("alchemy", "easy", 8, False)
    assert (hard.name, hard.variant, hard.max_turns, hard.limited_materials) == ("alchemy_hard", "hard", 15, True)
    assert hard.base_elements == (4, 6) and hard.shrink == (0.4, 0.8) and hard.recipes_per_element == (1, 2)
    assert hard.noise_fraction == (0.0, 0.3) and hard.stock_factor == (1.5, 2.0)
    assert easy.chance_reward == CHANCE_REWARD["easy"] and hard.chance_reward == CHANCE_REWARD["hard"]
    custom = AlchemyRandom(base_elements=5, max_rounds=10)
    assert custom.base_elements == (5, 5) and custom.max_turns == 10 and custom.chance_reward is None
    assert "8 rounds" in easy.system_prompt and "15 rounds" in hard.system_prompt
    assert "uses up" in hard.system_prompt and "unlimited" in easy.system_prompt
    assert AlchemyRandom.__doc__.splitlines()[0].strip()


@pytest.mark.parametrize("kw,field", [
    (dict(variant="medium"), "variant"), (dict(name=""), "name"), (dict(tiers=(1, 3)), "tiers"),
    (dict(tiers="x"), "tiers"), (dict(tiers=(4, 3)), "tiers"), (dict(base_elements=0), "base_elements"),
    (dict(base_elements=2.5), "base_elements"), (dict(shrink=0), "shrink"), (dict(shrink=(0.7, 0.5)), "shrink"),
    (dict(shrink=1.5), "shrink"), (dict(recipes_per_element=4), "recipes_per_element"),
    (dict(noise_fraction=(-0.1, 0.2)), "noise_fraction"), (dict(noise_fraction=float("nan")), "noise_fraction"),
    (dict(limited_materials="yes"), "limited_materials"), (dict(stock_factor=0.5), "stock_factor"),
    (dict(max_rounds=0), "max_rounds"), (dict(max_rounds=True), "max_rounds"), (dict(max_rounds=(3, 4)), "max_rounds"),
    (dict(max_world_tries=0), "max_world_tries"),
])
def test_bad_params(kw, field):
    with pytest.raises(ValueError, match=field):
        AlchemyRandom(**kw)


def test_bad_variant_message_and_registry():
    with pytest.raises(CodrlError, match="env 'alchemy'.*variant: Input should be 'easy' or 'hard'"):
        make_env("alchemy", variant="medium")


def test_start_rejects_bad_tasks():
    env = AlchemyRandom()
    pack = Pack(pack_id="t", env="alchemy", split="train", world=WORLD, tasks=())
    for spec in ({"target": "fire"}, {"target": "nope"}, {}):
        with pytest.raises(ValueError, match="target"):
            env.start(pack, Task("t/0", 0, spec))
    with pytest.raises(ValueError, match="stock"):
        make_env("alchemy_hard").start(pack, Task("t/0", 0, {"target": "golem"}))
    with pytest.raises(ValueError, match="world"):
        env.start(Pack("t", "alchemy", "train", {"tiers": []}, ()), Task("t/0", 0, {"target": "golem"}))
