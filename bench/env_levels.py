"""Checklist levels of every built-in environment that has scripted agents.

For each environment of ``codrl.envs.scripted.MODULES`` the four scripted agents of
:func:`codrl.eval.checklist.levels` play the same test packs: random (the chance level), the
oracle that reads the hidden world (the attainable level), the feedback learner that carries what
it learned in its hints, and the same learner without memory. A CoD environment shows a learner
that gains from position 0 to the last position while the memoryless one does not. Environments
whose module cannot be imported (yet) are skipped with a note.

    python bench/env_levels.py                       # all, 50 packs of K=4
    python bench/env_levels.py --envs frozenlake -k 6 --packs 100

Prints a markdown table (paste it into docs/environments.md) and, last, one line
``RESULT <env>_chance=... <env>_oracle=... <env>_learner_first=... <env>_learner_last=...
<env>_learner_gain=... <env>_memoryless_gain=... ...``.
"""

from __future__ import annotations

import argparse
import time

from codrl.envs import make_env
from codrl.envs.scripted import MODULES, agents_for
from codrl.errors import CodrlError
from codrl.eval.checklist import Levels, levels

HEADER = ("| env | chance | oracle | learner pos 0 -> last | memoryless pos 0 -> last |\n"
          "| --- | --- | --- | --- | --- |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", choices=list(MODULES), metavar="ENV", default=list(MODULES),
                    help=f"environments to measure (default: all of {', '.join(MODULES)})")
    ap.add_argument("--packs", type=int, default=50, help="packs per agent (default 50)")
    ap.add_argument("-k", "--pack-size", type=int, default=4, help="K: tasks per pack (default 4)")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.packs < 1 or args.pack_size < 1:
        ap.error("--packs and --pack-size must be >= 1")

    rows: list[tuple[Levels, float | None, float]] = []
    skipped: list[str] = []
    for name in args.envs:
        try:
            agents = agents_for(name)
            env = make_env(name)
        except (ImportError, AttributeError, CodrlError) as e:
            print(f"note: skipping {name}: cannot import it yet ({type(e).__name__}: {e})", flush=True)
            skipped.append(name)
            continue
        t0 = time.perf_counter()
        lv = levels(env, *agents, packs=args.packs, pack_size=args.pack_size, split=args.split, seed=args.seed)
        rows.append((lv, env.chance_reward, time.perf_counter() - t0))
        print(f"measured {name} in {rows[-1][2]:.1f}s", flush=True)

    print(f"\n{args.packs} {args.split} packs of K={args.pack_size} per agent, seed {args.seed}; "
          "chance = the random agent's mean reward.\n")
    print(HEADER)
    for lv, _, _ in rows:
        print(lv.row())
    declared = [f"{lv.env} {c:.3f}" for lv, c, _ in rows if c is not None]
    if declared:
        print(f"\nDeclared chance_reward: {', '.join(declared)}.")
    result = []
    for lv, _, secs in rows:
        result += [f"{lv.env}_chance={lv.chance:.3f}", f"{lv.env}_oracle={lv.oracle:.3f}",
                   f"{lv.env}_learner_first={lv.learner_first:.3f}", f"{lv.env}_learner_last={lv.learner_last:.3f}",
                   f"{lv.env}_learner_gain={lv.learner_last - lv.learner_first:.3f}",
                   f"{lv.env}_memoryless_gain={lv.memoryless_last - lv.memoryless_first:.3f}",
                   f"{lv.env}_seconds={secs:.1f}"]
    result.append(f"skipped={','.join(skipped) or 'none'}")
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
