"""Tests of the Terminal environment: simulated shell, file systems, tasks, packs, agents, parser."""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codrl.envs.scripted.terminal as scripted
from codrl.envs import Pack, Task, describe, make_env
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.base import TurnText
from codrl.envs.terminal import TASK_KINDS, Terminal, parse_command
from codrl.envs.terminal import env as env_mod
from codrl.envs.terminal import fs as fs_mod
from codrl.envs.terminal import shell as shell_mod
from codrl.envs.terminal import tasks as tasks_mod
from codrl.envs.terminal.fs import MAX_NODES, Dir, File, FileSystem, FsError, mode_string
from codrl.envs.terminal.shell import Machine, Shell, split_line
from codrl.eval.checklist import levels, reward_matrix

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers ----------------------------------------------------------------------------------------
def machines(flavour: str = "linux") -> Shell:
    """A small hand-made pair of machines: ``~/proj`` with files locally, ``/srv/team`` remotely."""
    home = "/home/ana" if flavour == "linux" else "/Users/ana"
    local = FileSystem(home)
    local.write(f"{home}/proj/a.txt", "alpha\n")
    local.write(f"{home}/proj/data/x.csv", "1,2\n")
    local.write(f"{home}/proj/data/sub/y.csv", "3,4\n")
    local.write(f"{home}/empty", None)
    remote = FileSystem("/home/deploy")
    remote.write("/home/deploy/README.txt", "hello\n")
    remote.write("/srv/team/old.txt", "old\n")
    return Shell(Machine(flavour, "ana", "box", local), Machine("server", "deploy", "srv1.example", remote))


def run(sh: Shell, line: str) -> str:
    return sh.run(line).output


def node(sh: Shell, path: str, remote: bool = False):
    m = sh.remote if remote else sh.local
    return m.fs.get(m.fs.parts(path, m.cwd))


def play(env: Terminal, pack: Pack, task: Task, commands: list[str]):
    ep = env.start(pack, task)
    ep.reset()
    res = None
    for c in commands:
        res = ep.step(f"<answer>{c}</answer>")
        if res.done:
            break
    return ep, res


# -- environment basics ------------------------------------------------------------------------------
def test_registry_params_and_description():
    env = make_env("terminal")
    assert isinstance(env, Terminal) and env.name == "terminal" and env.max_turns == 12
    assert env.shared_setup and env.reply_prefix == "<answer>" and env.stop_strings == ("</answer>",)
    assert env.chance_reward == 0.0
    first = inspect.getdoc(Terminal).splitlines()[0]
    assert first.startswith("Terminal:") and describe("terminal")
    for kw, field in [({"name": ""}, "name"), ({"shared_setup": "yes"}, "shared_setup"),
                      ({"max_turns": 0}, "max_turns"), ({"max_turns": True}, "max_turns"),
                      ({"flavours": ("linux", "bsd")}, "flavours"), ({"flavours": "linux"}, "flavours"),
                      ({"kinds": ()}, "kinds"), ({"kinds": ("teleport",)}, "kinds"),
                      ({"max_distractors": 4}, "max_distractors"), ({"goal_feedback": "loud"}, "goal_feedback")]:
        with pytest.raises(ValueError, match=field):
            Terminal(**kw)


def _pack_json(seed: int, index: int, shared: bool = True) -> str:
    pack = Terminal(shared_setup=shared).sample_pack("train", seed, index, 4)
    return json.dumps({"world": pack.world, "tasks": [t.spec for t in pack.tasks]}, sort_keys=True)


def test_determinism_json_and_fresh_process():
    a = _pack_json(3, 7)
    assert a == _pack_json(3, 7)
    assert a != _pack_json(3, 8) and a != _pack_json(4, 7)
    code = ("import hashlib, json; from codrl.envs.terminal import Terminal; "
            "p = Terminal().sample_pack('train', 3, 7, 4); "
            "print(hashlib.sha256(json.dumps({'world': p.world, 'tasks': [t.spec for t in p.tasks]}, "
            "sort_keys=True).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(a.encode()).hexdigest()


def test_tasks_share_the_setup_and_packs_differ():
    env = Terminal()
    setups = []
    for i in range(12):
        pack = env.sample_pack("train", 1, i, 4)
        assert pack.world["shared_setup"] is True
        for task in pack.tasks:
            assert "setup" not in task.spec
            assert env.start(pack, task).setup is pack.world["setup"]
        setups.append(json.dumps(pack.world["setup"], sort_keys=True))
    assert len(set(setups)) == len(setups)
    flavours = {json.loads(s)["os"] for s in setups}
    assert len(flavours) >= 2


def test_unshared_setups_differ_per_task():
    env = Terminal(shared_setup=False)
    pack = env.sample_pack("train", 0, 0, 4)
    assert pack.world == {"shared_setup": False}
    setups = [json.dumps(t.spec["setup"], sort_keys=True) for t in pack.tasks]
    assert len(set(setups)) == 4
    ep = env.start(pack, pack.tasks[2])
    assert ep.setup == pack.tasks[2].spec["setup"]
    assert "different machine setup" in env.system_prompt and "same in every task" in Terminal().system_prompt


def test_splits_disjoint():
    env = Terminal()
    keys = {}
    for split in ("train", "test"):
        keys[split] = {env.task_key(p.world, t.spec)
                       for i in range(25) for p in [env.sample_pack(split, 0, i, 4)] for t in p.tasks}
        assert len(keys[split]) == 100
    assert not keys["train"] & keys["test"]


def test_kinds_coverage_and_descriptions_hide_the_setup():
    env = Terminal()
    seen = set()
    for i in range(60):
        pack = env.sample_pack("test", 2, i, 4)
        setup = pack.world["setup"]
        srv = setup["server"]
        hidden = [srv["host"], srv["user"] + "@", srv["root"], srv["archives"], srv["teams_dir"] + "/",
                  setup["projects_dir"], setup["archive_dir"] + "/", EXT_OF[setup["format"]]]
        for t in pack.tasks:
            seen.add(t.spec["kind"])
            desc = t.spec["description"]
            assert not any(h in desc for h in hidden), (desc, hidden)
            assert t.spec["params"]["project"] in setup["projects"]
            if setup["os"] == "windows":
                assert not (t.spec["kind"] == "chmod" and t.spec["params"]["side"] == "local")
    assert seen == set(TASK_KINDS) and len(TASK_KINDS) == 17


EXT_OF = {"tar.gz": ".tar.gz", "tar": ".tar", "zip": ".zip"}


def test_kinds_knob_and_distractors():
    env = Terminal(kinds=("delete",), max_distractors=0, flavours=("macos",))
    for i in range(5):
        pack = env.sample_pack("train", 0, i, 4)
        assert pack.world["setup"]["os"] == "macos"
        for t in pack.tasks:
            assert t.spec["kind"] == "delete"
            assert [c["kind"] for c in t.spec["checks"]] == ["absent"]


# -- file systems ------------------------------------------------------------------------------------
def test_paths():
    fs = FileSystem("/home/ana")
    assert fs.parts("~", []) == ["home", "ana"]
    assert fs.parts("~/x/../y/./z", []) == ["home", "ana", "y", "z"]
    assert fs.parts("../../../..", ["a", "b"]) == []
    assert fs.parts("/etc//passwd", ["a"]) == ["etc", "passwd"]
    assert fs.parts("rel", ["a"]) == ["a", "rel"]
    with pytest.raises(FsError):
        fs.parts("/".join(["d"] * 500), [])
    sh = machines()
    assert run(sh, "cd proj/data/sub && pwd") == "/home/ana/proj/data/sub"
    assert run(sh, "cd ../../.. && pwd") == "/home/ana"
    assert run(sh, "cd ../../../../.. && pwd") == "/"
    assert run(sh, "cd ~ && pwd") == "/home/ana"
    assert "No such file or directory" in run(sh, "cd nowhere")
    assert "Not a directory" in run(sh, "cd proj/a.txt")
    assert sh.prompt() == "ana@box:~$"
    run(sh, "cd proj")
    assert sh.prompt() == "ana@box:~/proj$"


def test_ls_cat_and_modes():
    sh = machines()
    assert run(sh, "ls") == "empty/  proj/"
    assert run(sh, "ls proj") == "a.txt  data/"
    out = run(sh, "ls -l proj")
    assert "-rw-r--r--" in out and "drwxr-xr-x" in out and "a.txt" in out
    assert run(sh, "cat proj/a.txt") == "alpha"
    assert "Is a directory" in run(sh, "cat proj")
    assert "No such file" in run(sh, "cat nope")
    assert "cannot access 'nope'" in run(sh, "ls nope")


def test_mkdir_p():
    sh = machines()
    res = sh.run("mkdir a/b/c")
    assert not res.ok and "mkdir: cannot create directory 'a/b/c': No such file or directory" in res.output
    assert sh.run("mkdir -p a/b/c").ok and isinstance(node(sh, "a/b/c"), Dir)
    assert sh.run("mkdir -p a/b/c").ok
    assert "File exists" in run(sh, "mkdir a")
    assert "File exists" in run(sh, "mkdir proj/a.txt")


def test_cp_mv_rm():
    sh = machines()
    assert "-r not specified; omitting directory 'proj/data'" in run(sh, "cp proj/data d2")
    assert sh.run("cp -r proj/data d2").ok
    assert node(sh, "d2/sub/y.csv").content == "3,4\n" and node(sh, "proj/data/x.csv") is not None
    assert "into itself" in run(sh, "cp -r proj proj/data")
    assert sh.run("cp proj/a.txt proj/data/").ok and node(sh, "proj/data/a.txt").content == "alpha\n"
    assert "No such file or directory" in run(sh, "cp proj/a.txt nodir/x.txt")
    assert sh.run("mv proj/a.txt proj/b.txt").ok
    assert node(sh, "proj/a.txt") is None and node(sh, "proj/b.txt").content == "alpha\n"
    assert sh.run("mv proj/b.txt empty").ok and node(sh, "empty/b.txt") is not None
    assert "subdirectory of itself" in run(sh, "mv proj proj/data")
    assert "Is a directory" in run(sh, "rm proj/data")
    assert sh.run("rm -r proj/data").ok and node(sh, "proj/data") is None
    assert "No such file" in run(sh, "rm ghost") and sh.run("rm -f ghost").ok
    assert "dangerous" in run(sh, "rm -rf /") and node(sh, "/home") is not None
    assert "refusing to remove" in run(sh, "rm -r ..")
    assert "invalid option -- 'z'" in run(sh, "cp -z a b")


def test_chmod_bits():
    sh = machines()
    assert sh.run("chmod 750 proj/a.txt").ok
    assert node(sh, "proj/a.txt").mode == 0o750
    assert mode_string(node(sh, "proj/a.txt")) == "-rwxr-x---"
    assert "-rwxr-x---" in run(sh, "ls -l proj")
    for bad in ("u+x", "0755", "75", "888", "a=rwx"):
        res = sh.run(f"chmod {bad} proj/a.txt")
        assert not res.ok and "3-digit" in res.output
    assert node(sh, "proj/a.txt").mode == 0o750
    assert "not supported" in run(sh, "chmod -R 755 proj")
    assert "cannot access 'nope'" in run(sh, "chmod 644 nope")


def test_tar_round_trip():
    sh = machines()
    assert "named after the folder" in run(sh, "tar -czf stuff.tar.gz proj/data")
    assert "-z is missing" in run(sh, "tar -cf data.tar.gz proj/data")
    assert "must end in .tar.gz" in run(sh, "tar -czf data.tar proj/data")
    assert "one of the -c, -x, -t" in run(sh, "tar -f data.tar proj/data")
    res = sh.run("tar -czvf data.tar.gz proj/data")
    assert res.ok and res.output.splitlines() == ["data/", "data/sub/", "data/sub/y.csv", "data/x.csv"]
    arch = node(sh, "data.tar.gz").archive
    assert arch["format"] == "tar.gz" and arch["entries"]["data/x.csv"] == "1,2\n"
    assert run(sh, "tar -tf data.tar.gz").splitlines() == list(arch["entries"])
    assert "binary file" in run(sh, "cat data.tar.gz")
    # extracting goes into the current folder, or -C
    assert sh.run("cd empty && tar -xzf ../data.tar.gz").ok
    assert node(sh, "~/empty/data/sub/y.csv").content == "3,4\n"
    assert sh.run("cd ~ && mkdir t2 && tar -xf data.tar.gz -C t2").ok and node(sh, "t2/data/x.csv") is not None
    assert sh.run("tar cf data.tar -C proj data").ok and node(sh, "data.tar").archive["format"] == "tar"
    assert "does not look like a tar archive" in run(sh, "tar -xf proj/a.txt")
    assert "Cannot open" in run(sh, "tar -xf nothing.tar")


def test_zip_round_trip():
    sh = machines()
    res = sh.run("zip data.zip proj/data")
    assert res.ok and "without -r only the empty folder" in res.output
    assert node(sh, "data.zip").archive["entries"] == {"data/": None}
    assert sh.run("zip -r data proj/data").ok  # .zip is added
    entries = node(sh, "data.zip").archive["entries"]
    assert set(entries) == {"data/", "data/x.csv", "data/sub/", "data/sub/y.csv"}
    assert "data/x.csv" in run(sh, "unzip -l data.zip")
    assert "named after the folder" in run(sh, "zip -r other.zip proj/data")
    assert sh.run("unzip data.zip -d out").ok and node(sh, "out/data/sub/y.csv").content == "3,4\n"
    assert sh.run("cd empty && unzip ../data.zip").ok and node(sh, "~/empty/data/x.csv") is not None
    assert "not a zip archive" in run(sh, "unzip ~/proj/a.txt")
    assert "cannot find or open" in run(sh, "unzip ghost.zip")


def test_ssh_exit_and_scp_quirks():
    sh = machines()
    assert "Could not resolve hostname srv9" in run(sh, "ssh deploy@srv9")
    assert "Permission denied" in run(sh, "ssh root@srv1.example")
    assert "Permission denied" in run(sh, "ssh srv1.example")  # the local user name is not the server's
    assert "not supported" in run(sh, "ssh deploy@srv1.example ls")
    assert "no server session" in run(sh, "exit")
    # upload a file; folders need -r; the destination folder must exist
    assert sh.run("scp proj/a.txt deploy@srv1.example:/srv/team/").ok
    assert node(sh, "/srv/team/a.txt", remote=True).content == "alpha\n"
    res = sh.run("scp proj/data deploy@srv1.example:/srv/team/")
    assert not res.ok and "scp: proj/data: not a regular file" in res.output
    res = sh.run("scp proj/a.txt deploy@srv1.example:/srv/x/y/")
    assert not res.ok and "scp: /srv/x/y/: No such file or directory" in res.output
    assert "No such file or directory" in run(sh, "scp proj/a.txt deploy@srv1.example:/srv/x/y.txt")
    assert sh.run("scp -r proj/data deploy@srv1.example:/srv/team/").ok
    assert node(sh, "/srv/team/data/sub/y.csv", remote=True).content == "3,4\n"
    assert sh.run("scp proj/a.txt deploy@srv1.example:copy.txt").ok  # relative to the server home
    assert node(sh, "/home/deploy/copy.txt", remote=True) is not None
    assert "Could not resolve" in run(sh, "scp proj/a.txt deploy@other:/srv/")
    assert "Permission denied" in run(sh, "scp proj/a.txt bob@srv1.example:/srv/")
    assert "one side must be on the server" in run(sh, "scp proj/a.txt b.txt")
    # download
    assert sh.run("scp deploy@srv1.example:/srv/team/old.txt proj/").ok and node(sh, "proj/old.txt").content == "old\n"
    # log in, look around, scp refused there, exit
    res = sh.run("ssh deploy@srv1.example")
    assert res.ok and "Welcome to srv1.example" in res.output and sh.on_remote
    assert sh.prompt() == "deploy@srv1.example:~$" and run(sh, "pwd") == "/home/deploy"
    assert run(sh, "cat README.txt") == "hello"
    assert "already logged in" in run(sh, "ssh deploy@srv1.example")
    assert "run scp from your local machine" in run(sh, "scp a b")
    assert sh.run("cd /srv/team && chmod 700 old.txt").ok
    assert "Connection to srv1.example closed" in run(sh, "exit") and not sh.on_remote
    assert node(sh, "/srv/team/old.txt", remote=True).mode == 0o700
    assert sh.prompt() == "ana@box:~$"
    run(sh, "ssh deploy@srv1.example")
    assert run(sh, "pwd") == "/home/deploy"  # every login starts at home
    assert "Connection" in run(sh, "logout")


def test_per_os_commands():
    win = machines("windows")
    assert win.prompt() == "PS C:\\Users\\ana>"
    for cmd in ("chmod 755 proj\\a.txt", "tar -czf data.tar.gz proj\\data", "rsync a b"):
        res = win.run(cmd)
        assert not res.ok and "is not recognized" in res.output
    assert "Directory: C:\\Users\\ana\\proj" in run(win, "dir proj")
    assert run(win, "type proj\\a.txt") == "alpha"
    assert win.run("mkdir x\\y\\z").ok and isinstance(node(win, "x/y/z"), Dir)  # parents are made
    assert "-Recurse" in run(win, "copy proj\\data d2")
    assert win.run("copy -Recurse proj\\data d2").ok and node(win, "d2/sub/y.csv") is not None
    assert win.run("ren proj\\a.txt b.txt").ok and node(win, "proj/b.txt") is not None
    assert "has children" in run(win, "del d2")
    assert win.run("del -r d2").ok and node(win, "d2") is None
    assert win.run("cd C:\\Users\\ana\\proj && pwd").ok and run(win, "pwd") == "C:\\Users\\ana\\proj"
    assert "Cannot find drive" in run(win, "cd D:\\")
    assert "Cannot find path 'C:\\Users\\ana\\proj\\nope'" in run(win, "cat nope")
    assert win.run("zip -r data.zip C:\\Users\\ana\\proj\\data").ok
    assert win.run("scp -r ~\\proj\\data deploy@srv1.example:/srv/team/").ok
    assert win.run("LS").ok  # PowerShell command names ignore case
    assert "dir" in run(win, "help") and "chmod" not in run(win, "help").split(":")[1].split("\n")[0]
    lin = machines("linux")
    assert "bash: dir: command not found" in run(lin, "dir")
    assert "bash: rsync: command not found" in run(lin, "rsync a b")
    assert "chmod" in run(lin, "help")
    mac = machines("macos")
    assert mac.prompt() == "ana@box ~ %"
    run(mac, "cd proj/data")
    assert mac.prompt() == "ana@box data %" and run(mac, "pwd") == "/Users/ana/proj/data"
    assert "zsh: command not found: dir" in run(mac, "dir")


def test_chains_and_refusals():
    sh = machines()
    res = sh.run("cat nope && mkdir made")
    assert not res.ok and node(sh, "made") is None and res.commands == 1
    res = sh.run("cat nope ; mkdir made")
    assert res.ok and node(sh, "made") is not None and res.commands == 2
    res = sh.run("cat nope && mkdir m1 ; mkdir m2")
    assert node(sh, "m1") is None and node(sh, "m2") is not None
    assert sh.run("ls;").ok
    before = fs_mod.count(sh.local.fs.root)
    for line, text in [("ls | rm -rf /", "pipes"), ("cat a > /etc/passwd", "redirection"),
                       ("echo $(rm -rf ~)", "command substitution"), ("echo `rm x`", "command substitution"),
                       ("rm -r $HOME", "variables"), ("rm -r *", "wildcards"), ("rm proj/?.txt", "wildcards"),
                       ("sleep 1 &", "background"), ("echo 'open", "unterminated"), ("&& ls", "syntax error"),
                       ("ls &&", "syntax error"), ("ls ;; ls", "syntax error"), ("echo \"$(x)\"", "substitution"),
                       ("x" * 2000, "too long"), (" && ".join(["ls"] * 40), "too many")]:
        res = sh.run(line)
        assert not res.ok and text in res.output, (line, res.output)
    assert fs_mod.count(sh.local.fs.root) == before
    assert run(sh, "echo 'a | b' \"c > d\"") == "a | b c > d"  # quoted specials are plain text
    assert split_line("cp 'my file.txt' \"x y\"") == ([("", ["cp", "my file.txt", "x y"])], None)


def test_space_limit():
    sh = machines()
    t = time.perf_counter()
    for k in range(60):
        sh.run(" ; ".join(f"cp -r proj c{k}x{i}" for i in range(14)))
    assert fs_mod.count(sh.local.fs.root) <= MAX_NODES
    assert "No space left on device" in run(sh, "cp -r proj full")
    sh2 = machines()  # a big archive: extracting it stays linear
    for k in range(12):
        sh2.run(" ; ".join(f"cp -r proj big/c{k}x{i}" if k or i else "mkdir big" for i in range(14)))
    assert 900 < fs_mod.count(node(sh2, "big")) < 1300
    t2 = time.perf_counter()
    assert sh2.run("tar -cf big.tar big && mkdir t && cd t && tar -xf ../big.tar").ok
    assert time.perf_counter() - t2 < 2.0 and fs_mod.count(node(sh2, "~/t/big")) == fs_mod.count(node(sh2, "~/big"))
    assert time.perf_counter() - t < 10


# -- episodes -----------------------------------------------------------------------------------------
def _hand_task() -> tuple[Terminal, Pack, Task]:
    env = Terminal()
    pack = env.sample_pack("train", 5, 0, 4)
    return env, pack, pack.tasks[0]


def test_first_observation_and_prompt():
    env, pack, task = _hand_task()
    obs = env.start(pack, task).reset()
    assert obs.startswith("Task: " + task.spec["description"])
    assert "12 commands" in obs and "<answer>ls</answer>" in obs and "home folder" in obs
    assert "<answer>...</answer>" in env.system_prompt and "&&" in env.system_prompt
    assert "12 commands per task" in env.system_prompt


def test_episode_success_done_timeout_and_over():
    env, pack, task = _hand_task()
    setup = pack.world["setup"]
    explore, solve = scripted.explorer_commands(setup, {"kind": task.spec["kind"], **task.spec["params"]})
    ep, res = play(env, pack, task, explore + solve)
    assert res.done and res.reward == 1.0 and res.valid and res.info["event"] == "solved"
    assert "Goal reached" in res.feedback and "[ok]" in res.feedback and res.observation is None
    assert ep.step("<answer>ls</answer>").info["event"] == "over"
    ep, res = play(env, pack, task, ["ls", "done"])
    assert res.done and res.reward == 0.0 and res.info["event"] == "done" and res.info["turns"] == 2
    assert "You answered done" in res.feedback and "[FAILED]" in res.feedback
    ep, res = play(env, pack, task, ["ls"] * 20)
    assert res.info["event"] == "timeout" and res.info["turns"] == 12 and res.reward == 0.0
    assert "You used all 12 commands" in res.feedback
    ep = env.start(pack, task)
    ep.reset()
    step = ep.step("<answer>cat nothing-here</answer>")
    assert step.valid and not step.done and not step.info["ok"]
    assert "No such file" in step.feedback and "(11 commands left)" in step.observation
    step = ep.step("<answer>ls\nrm -r ~</answer>")
    assert step.valid and not step.done and "single line" in step.feedback
    terse = Terminal(goal_feedback="terse")
    ep, res = play(terse, pack, task, ["done"])
    assert "Goal not reached" in res.feedback and "[FAILED]" not in res.feedback


def test_reset_restores_the_machines():
    env, pack, task = _hand_task()
    ep = env.start(pack, task)
    ep.reset()
    snap = json.dumps(ep.shell.local.fs.snapshot(), sort_keys=True)
    ep.step("<answer>rm -r ~</answer>")
    assert json.dumps(ep.shell.local.fs.snapshot(), sort_keys=True) != snap
    ep.reset()
    assert json.dumps(ep.shell.local.fs.snapshot(), sort_keys=True) == snap and ep.turns == 0


def test_every_task_solvable_by_oracle_and_by_exploring():
    oracle = agents_for("terminal").oracle
    for shared in (True, False):
        env = Terminal(shared_setup=shared)
        for split in ("train", "test"):
            m = reward_matrix(env, oracle, packs=15, split=split, seed=11)
            assert m.min() == 1.0, (shared, split)
    env = Terminal()
    worst = 0
    for i in range(30):
        pack = env.sample_pack("test", 9, i, 4)
        setup = pack.world["setup"]
        facts = scripted.setup_facts(setup)
        for task in pack.tasks:
            initial = tasks_mod.evaluate(task.spec["checks"], tasks_mod.build_shell(setup, task.spec))
            assert not all(ok for ok, _ in initial)  # no task is solved before the first command
            params = {"kind": task.spec["kind"], **task.spec["params"]}
            explore, solve = scripted.explorer_commands(setup, params)
            ep, res = play(env, pack, task, explore + solve)
            assert res.reward == 1.0 and ep.turns <= 12, (params, explore, solve, res.feedback)
            worst = max(worst, ep.turns)
            # Every fact the solution uses was printed while exploring (discoverable, not guessed).
            ep2 = env.start(pack, task)
            ep2.reset()
            seen = task.spec["description"] + "".join(ep2.step(f"<answer>{c}</answer>").feedback for c in explore)
            for key in scripted.needs(params):
                value = facts[key].replace("~/", "")
                for comp in value.replace("@", "/").split("/"):
                    assert comp in seen, (key, comp, explore)
    assert worst >= 10  # the hardest tasks do need most of the budget when nothing is known


def test_random_near_chance():
    env = Terminal()
    m = reward_matrix(env, agents_for("terminal").random, packs=30, seed=1)
    assert abs(m.mean() - env.chance_reward) < 0.02


def test_learner_improves_memoryless_does_not():
    agents = agents_for("terminal")
    lv = levels(Terminal(), *agents, packs=50)
    assert lv.oracle == 1.0 and lv.chance == 0.0
    assert lv.learner_last >= lv.learner_first + 0.25, lv
    assert abs(lv.memoryless_last - lv.memoryless_first) < 0.15, lv
    assert lv.learner_last > lv.memoryless_last + 0.25, lv


def test_learner_hints_round_trip_and_report_learning():
    env, pack, task = _hand_task()
    agent = scripted.learner_agent(pack, np.random.default_rng(0))
    ep = env.start(pack, task)
    obs = ep.reset()
    transcript = []
    res = ep.step(agent.act("", obs))  # then give up: the report alone teaches the paths
    transcript.append(TurnText(obs, "", res.feedback))
    res = ep.step("<answer>done</answer>")
    transcript.append(TurnText("", "<answer>done</answer>", res.feedback))
    hints = agent.write_hints("", transcript, 0.0)
    facts, _ = scripted.parse_hints(hints)
    truth = scripted.setup_facts(pack.world["setup"])
    assert facts and all(truth[k] == v for k, v in facts.items() if k in truth), (facts, truth)


# -- parser and fuzzing -----------------------------------------------------------------------------
def test_parse_command():
    assert parse_command("<answer>ls -l</answer>") == "ls -l"
    assert parse_command("I will look first. <ANSWER>  cd ~  </Answer >\n") == "cd ~"
    env = Terminal()
    assert parse_command(env.reply_prefix + "pwd</answer>") == "pwd"
    assert parse_command(env.reply_prefix + "pwd</answer>\n") == "pwd"  # a stop token may carry a newline
    for bad in ["ls", "<answer></answer>", "<answer>   </answer>", "<answer>ls", "ls</answer>",
                "<answer>ls</answer><answer>pwd</answer>", "</answer>ls<answer>", "<answer>a <answer>b</answer>",
                "Use <answer>cmd</answer> like <answer>ls</answer>", None, 42, "<answer>" * 10_000]:
        assert parse_command(bad) is None, bad


def test_malformed_is_scored_failure():
    env, pack, task = _hand_task()
    for bad in ["no tags", "<answer></answer>", "<answer>ls</answer> or <answer>pwd</answer>", ""]:
        ep = env.start(pack, task)
        ep.reset()
        res = ep.step(bad)
        assert res.done and not res.valid and res.reward == 0.0 and res.info["event"] == "invalid"
        assert "<answer>...</answer>" in res.feedback and res.observation is None


def test_huge_replies_are_fast():
    env, pack, task = _hand_task()
    for reply in ["x" * 1_000_000, "<answer>" * 200_000, "</answer>" * 200_000, "<answer " + " " * 1_000_000,
                  "<answer>" + "a " * 500_000 + "</answer>", "<answer>" + "../" * 300_000 + "</answer>"]:
        ep = env.start(pack, task)
        ep.reset()
        t = time.perf_counter()
        res = ep.step(reply)
        assert time.perf_counter() - t < 1.0
        if parse_command(reply) is None:
            assert res.done and not res.valid and res.reward == 0.0
        else:
            assert res.valid and not res.done and "too long" in res.feedback


def _real_listing() -> list[str]:
    """The real working folder's entries (tool caches such as .hypothesis left out)."""
    return sorted(n for n in os.listdir(".") if not n.startswith("."))


_REAL_CWD = _real_listing()
_FRAGMENTS = ["ls", "ls -l", "cd", "cd ..", "../../..", "~", "/", "/etc/passwd", "rm -rf /", "rm -r ~", "| rm -rf /",
              "> /etc/passwd", "$(rm -rf ~)", "`reboot`", "&&", ";", "&", "'", '"', "*", "tar -czf", "tar -xf",
              "zip -r", "unzip", "scp", "scp -r", "ssh", "exit", "mkdir -p", "cp -r", "mv", "chmod 777", "cat",
              "deploy@srv1.example:", "C:\\", "\\", "ümlaut", "日本", "\x00", "\n", "\t", "done", "help", "x" * 50,
              "-" * 30, "a/" * 40]


@FAST
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=30), max_size=12))
def test_fuzz_command_lines(parts):
    line = " ".join(parts)
    for flavour in ("linux", "windows", "macos"):
        sh = machines(flavour)
        t = time.perf_counter()
        res = sh.run(line)
        if not sh.done:
            sh.run("ssh deploy@srv1.example ; " + line)
        assert time.perf_counter() - t < 1.0
        assert isinstance(res.output, str)
    assert _real_listing() == _REAL_CWD


@FAST
@given(st.text(max_size=200) | st.lists(st.sampled_from(["<answer>", "</answer>", "<ANSWER >", "ls", " ", "x",
                                                        "</answer", "<answer", "\n"] + _FRAGMENTS),
                                       max_size=15).map("".join))
def test_fuzz_replies(reply):
    env, pack, task = _FUZZ_ENV
    ep = env.start(pack, task)
    ep.reset()
    res = ep.step(reply)
    cmd = parse_command(reply)
    if cmd is None:
        assert res.done and not res.valid and res.reward == 0.0 and "<answer>" in res.feedback
    else:
        assert res.valid and "internal simulator error" not in res.feedback
    assert _real_listing() == _REAL_CWD


_FUZZ_ENV = _hand_task()


def test_nothing_real_is_touched_by_the_package():
    """The simulator's modules import nothing that reaches the real system and never eval/exec."""
    banned_modules = {"os", "subprocess", "shutil", "pathlib", "socket", "ctypes", "importlib", "io", "tempfile"}
    for mod in (fs_mod, shell_mod, tasks_mod, env_mod, scripted):
        tree = ast.parse(Path(mod.__file__).read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                assert not {a.name.split(".")[0] for a in n.names} & banned_modules, mod.__name__
            elif isinstance(n, ast.ImportFrom):
                assert (n.module or "").split(".")[0] not in banned_modules, mod.__name__
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                assert n.func.id not in {"eval", "exec", "open", "compile", "__import__"}, mod.__name__


def test_file_nodes_are_plain_data():
    f = File("x")
    d = Dir({"f": f})
    copy = fs_mod.clone(d)
    copy.children["f"].content = "changed"
    assert f.content == "x" and fs_mod.count(d) == 2
