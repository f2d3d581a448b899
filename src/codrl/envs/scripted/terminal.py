"""Scripted Terminal agents: random commands, the oracle, and an exploring learner.

* **random**: random commands from the supported set with random paths (names taken from the task
  text, what the last listing showed and a few fixed words): the chance level.
* **oracle**: reads the machine setup (``pack.world`` or the task's own ``setup``) and the task's
  parameters and runs a known-good plan, with every quirk of the simulator avoided.
* **learner**: sees only the observation text and its hints. It parses the task from its
  description, then finds the facts it lacks by exploring like a newcomer would (``ls`` the home
  folder, ``cat`` the note it finds there, ``ls`` folder after folder until the project shows up,
  ``ssh`` to the server and ``cat`` its README), runs the same plan as the oracle, and fixes its
  commands when the shell complains about one of the quirks (``scp`` without ``-r``, symbolic
  ``chmod`` modes, ``mkdir`` without ``-p``, ``zip`` without ``-r``, ``scp`` into a missing folder,
  extracting outside the target folder). It writes every fact and quirk it met into its hints
  (``key: value`` lines) and also reads the final goal report, whose check lines give away where
  things were supposed to go. With hints it skips the exploring and the quirk mistakes.

All agents play one task per instance (``act`` is called once per turn with the latest
observation); only the hints string carries over between tasks.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.scripted.base import TurnText
from codrl.envs.terminal.tasks import EXTENSIONS, MODES

Script = Generator[str, str, None]

#: Fact keys as they appear in hints (``key: value`` lines).
FACTS = ("login", "team", "local projects", "local archives", "archive format", "team folders", "server projects",
         "server archives")
#: Quirks the learner can run into, as written in its hints (``quirk: ...``).
QUIRKS = {
    "scp_r": "scp needs -r for folders",
    "chmod_digits": "chmod takes 3-digit modes like 755",
    "mkdir_p": "mkdir needs -p for nested folders",
    "zip_r": "zip needs -r for folders",
    "scp_parent": "scp does not create folders: make the destination folder first",
    "extract_cd": "tar -x and unzip extract into the current folder: cd there first",
}
_QUIRK_BY_TEXT = {v: k for k, v in QUIRKS.items()}

_ANSWER = "<answer>{}</answer>"
_OS_RE = re.compile(r"on your local (Linux|macOS|Windows) machine")
_LOGIN_RE = re.compile(r"Team server: (\S+@\S+)")
_LOCAL_ARCH_RE = re.compile(r"Archives on this machine go in (\S+): one (\S+) archive")
_TEAM_RE = re.compile(r"Our team on the server: (\S+)")
_TEAMS_DIR_RE = re.compile(r"Team folders are in (\S+)/<team>")
_ARCHIVE_EXT_RE = re.compile(r"\.(tar\.gz|tar|zip)$")
_CHECK_RE = re.compile(r"^\s*\[(ok|FAILED)\] (\S+) (.*)$")
_ARCH_CHECK_RE = re.compile(r"is a (tar\.gz|tar|zip) archive of the folder (\S+)")
_WIN_ROW_RE = re.compile(r"^(d----|-a---)\s+(?:\d+\s+)?(.+)$")

_B = "`([^`]+)`"
_PROJ = f"project {_B}"
_WHERE = "(on your machine|on the team server)"
#: Task kind -> regex over the description (most specific first).
TASK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((k, re.compile(p)) for k, p in (
    ("upload_chmod", (rf"Upload (?P<file>{_B}) from your local copy of {_PROJ} .*set its permissions there to "
                      r"(?P<rwx>[rwx-]{9})")),
    ("mkdir_upload", rf"Upload {_B} from your local copy of {_PROJ} into the folder {_B}"),
    ("upload", rf"Upload (?:the {_B} folder|{_B}) from your local copy of {_PROJ} to the project's folder"),
    ("download", rf"copy of {_PROJ} has (?:a folder {_B}|a file {_B}) that your local copy lacks"),
    ("rename", rf"In {_PROJ} {_WHERE}, rename {_B} to {_B}"),
    ("move", rf"In {_PROJ} {_WHERE}, move {_B} into the project's {_B} subfolder"),
    ("chmod", rf"In {_PROJ} {_WHERE}, set the permissions of {_B} to (?P<rwx>[rwx-]{{9}})"),
    ("delete", rf"In {_PROJ} {_WHERE}, delete the (?:file|folder) {_B}"),
    ("copy", rf"In {_PROJ} {_WHERE}, make a copy of {_B} named {_B}"),
    ("mkdir", rf"In {_PROJ} {_WHERE}, create the nested folder {_B}"),
    ("pack_upload", (rf"Archive the {_B} folder of your local copy of {_PROJ} following the site's archive "
                     "convention, and put")),
    ("pack", rf"Archive the {_B} folder of your local copy of {_PROJ} following the site's convention"),
    ("download_extract", rf"holds an archive of the {_B} folder of {_PROJ}"),
    ("upload_delete", rf"Move {_B} from your local copy of {_PROJ} to the project's folder on the team server"),
    ("pack_upload_extract", rf"Ship the {_B} folder of your local copy of {_PROJ}"),
    ("download_rename", (rf"Download {_B} from the team server's copy of {_PROJ} into your local copy of the "
                         rf"project, saving it as {_B}")),
    ("backup_upload", rf"Your local {_B} in {_PROJ} is newer.*rename the project's current {_B} to {_B}"),
))

_LIKELY_TOP = ("work", "code", "dev", "src", "Projects", "Developer", "source", "projects", "repos")
_LIKELY_SUB = ("projects", "clients", "active", "team", "repos", "work")
_STANDARD = ("Desktop", "Downloads", "Music", "Pictures", "Movies", "Videos")


def parse_task(observation: str) -> dict[str, Any] | None:
    """Kind and parameters of the task described in a first observation, or None."""
    for kind, rx in TASK_PATTERNS:
        m = rx.search(observation)
        if not m:
            continue
        g = [x for x in m.groups() if x is not None]
        p: dict[str, Any] = {"kind": kind}
        if kind == "upload_chmod":
            p.update(file=g[1], project=g[2], mode=rwx_to_octal(g[3]), rwx=g[3])
        elif kind == "mkdir_upload":
            p.update(file=g[0], project=g[1], path=g[2])
        elif kind in ("upload", "download"):
            folder_first = kind == "upload"
            name, proj = (g[0], g[1]) if folder_first else (g[1], g[0])
            is_folder = (m.group(1) is not None) if kind == "upload" else (m.group(2) is not None)
            p.update(project=proj, **({"folder": name} if is_folder else {"file": name}))
        elif kind in ("rename", "move", "copy", "delete", "mkdir", "chmod"):
            p.update(project=g[0], side="local" if g[1] == "on your machine" else "remote")
            if kind in ("rename", "copy"):
                p.update(file=g[2], new=g[3])
            elif kind == "move":
                p.update(file=g[2], sub=g[3])
            elif kind == "delete":
                p.update(target=g[2])
            elif kind == "mkdir":
                p.update(path=g[2])
            else:
                p.update(file=g[2], mode=rwx_to_octal(g[3]), rwx=g[3])
        elif kind in ("pack", "pack_upload", "download_extract", "pack_upload_extract"):
            p.update(folder=g[0], project=g[1])
        elif kind == "upload_delete":
            p.update(file=g[0], project=g[1])
        elif kind == "download_rename":
            p.update(file=g[0], project=g[1], new=g[2])
        elif kind == "backup_upload":
            p.update(file=g[0], project=g[1], new=g[3])
        return p
    return None


def rwx_to_octal(rwx: str) -> str:
    """``rwxr-x---`` -> ``750``."""
    return "".join(str(sum(v for c, v in zip(rwx[i:i + 3], (4, 2, 1), strict=True) if c != "-")) for i in (0, 3, 6))


def rwx_to_symbolic(rwx: str) -> str:
    """``rwxr-x---`` -> ``u=rwx,g=rx,o=`` (what a newcomer tries first)."""
    return ",".join(f"{w}={rwx[i:i + 3].replace('-', '')}" for w, i in (("u", 0), ("g", 3), ("o", 6)))


def parse_listing(text: str) -> tuple[list[str], list[str]]:
    """(folders, files) in an ``ls`` output (POSIX short format or a PowerShell table)."""
    dirs: list[str] = []
    files: list[str] = []
    rows = [_WIN_ROW_RE.match(line) for line in text.splitlines()]
    if any(rows):
        for m in rows:
            if m:
                (dirs if m.group(1) == "d----" else files).append(m.group(2).strip())
        return dirs, files
    for line in text.splitlines():
        for name in line.split("  "):
            name = name.strip()
            if not name or name.endswith(":"):
                continue
            (dirs if name.endswith("/") else files).append(name.rstrip("/"))
    return dirs, files


def command_output(observation: str) -> str:
    """The output of the last command in a follow-up observation (between the echo and the prompt)."""
    lines = observation.split("\n")
    if len(lines) >= 3 and lines[-1].startswith("("):
        return "\n".join(lines[1:-2])
    return "\n".join(lines[1:])


def parse_hints(hints: str) -> tuple[dict[str, str], set[str]]:
    """Facts and quirk keys from hints written by :meth:`LearnerAgent.write_hints`."""
    facts: dict[str, str] = {}
    quirks: set[str] = set()
    for line in hints.splitlines():
        key, sep, value = line.strip().lstrip("-* ").partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            continue
        if key == "quirk" and value in _QUIRK_BY_TEXT:
            quirks.add(_QUIRK_BY_TEXT[value])
        elif key in FACTS:
            facts[key] = value
    return facts, quirks


# -- plans -----------------------------------------------------------------------------------------
def needs(task: dict[str, Any]) -> set[str]:
    """The facts a task's plan uses."""
    kind = task["kind"]
    side = task.get("side")
    out: set[str] = set()
    if side != "remote" or kind not in ("rename", "move", "chmod", "delete", "copy", "mkdir"):
        out.add("local projects")
    if side != "local" and kind != "pack":
        out |= {"login", "server projects"}
    if kind == "pack":
        out |= {"local archives", "archive format"}
    if kind in ("pack_upload", "download_extract", "pack_upload_extract"):
        out |= {"server archives", "archive format"}
    if kind in ("pack_upload", "download_extract"):
        out.discard("server projects")
    return out


def _pack_cmd(fmt: str, src: str, dest_dir: str, folder: str, quirks: set[str]) -> str:
    name = f"{dest_dir}/{folder}{EXTENSIONS[fmt]}"
    if fmt == "zip":
        return f"zip {'-r ' if 'zip_r' in quirks else ''}{name} {src}"
    return f"tar -c{'z' if fmt == 'tar.gz' else ''}f {name} {src}"


def _extract_cmd(fmt: str, archive: str, into: str, quirks: set[str]) -> str:
    tool = "unzip" if fmt == "zip" else f"tar -x{'z' if fmt == 'tar.gz' else ''}f"
    if "extract_cd" in quirks:
        return f"cd {into} && {tool} {archive}"
    return f"{tool} {archive}"


def plan(task: dict[str, Any], facts: dict[str, str], quirks: set[str]) -> list[tuple[str, str]]:
    """(machine, command) steps that solve ``task`` given ``facts`` (``local``/``remote``)."""
    kind, proj = task["kind"], task["project"]
    lp = f"{facts.get('local projects', '~')}/{proj}"
    rp = f"{facts.get('server projects', '~')}/{proj}"
    login = facts.get("login", "")
    fmt = facts.get("archive format", "tar.gz")
    ext = EXTENSIONS.get(fmt, ".tar.gz")
    ra = facts.get("server archives", "~")
    side = task.get("side", "local")
    xp = lp if side == "local" else rp
    mode = task.get("mode", "")
    chmod = mode if "chmod_digits" in quirks else rwx_to_symbolic(task.get("rwx", "---------"))
    scp = "scp -r" if "scp_r" in quirks else "scp"
    if kind == "upload":
        item = task.get("folder") or task.get("file")
        return [("local", f"{scp if 'folder' in task else 'scp'} {lp}/{item} {login}:{rp}/")]
    if kind == "download":
        item = task.get("folder") or task.get("file")
        return [("local", f"{scp if 'folder' in task else 'scp'} {login}:{rp}/{item} {lp}/")]
    if kind == "rename":
        return [(side, f"mv {xp}/{task['file']} {xp}/{task['new']}")]
    if kind == "move":
        return [(side, f"mv {xp}/{task['file']} {xp}/{task['sub']}/")]
    if kind == "chmod":
        return [(side, f"chmod {chmod} {xp}/{task['file']}")]
    if kind == "delete":
        return [(side, f"rm -r {xp}/{task['target']}")]
    if kind == "copy":
        return [(side, f"cp {xp}/{task['file']} {xp}/{task['new']}")]
    if kind == "mkdir":
        return [(side, f"mkdir {'-p ' if 'mkdir_p' in quirks else ''}{xp}/{task['path']}")]
    if kind == "pack":
        d = task["folder"]
        return [("local", _pack_cmd(fmt, f"{lp}/{d}", facts.get("local archives", "~"), d, quirks))]
    if kind == "pack_upload":
        d = task["folder"]
        return [("local", _pack_cmd(fmt, f"{lp}/{d}", lp, d, quirks)),
                ("local", f"scp {lp}/{d}{ext} {login}:{ra}/")]
    if kind == "download_extract":
        d = task["folder"]
        return [("local", f"scp {login}:{ra}/{d}{ext} {lp}/"),
                ("local", _extract_cmd(fmt, f"{lp}/{d}{ext}", lp, quirks))]
    if kind == "mkdir_upload":
        steps = [("remote", f"mkdir -p {rp}/{task['path']}")] if "scp_parent" in quirks else []
        return steps + [("local", f"scp {lp}/{task['file']} {login}:{rp}/{task['path']}/")]
    if kind == "upload_chmod":
        return [("local", f"scp {lp}/{task['file']} {login}:{rp}/"), ("remote", f"chmod {chmod} {rp}/{task['file']}")]
    if kind == "upload_delete":
        return [("local", f"scp {lp}/{task['file']} {login}:{rp}/"), ("local", f"rm {lp}/{task['file']}")]
    if kind == "pack_upload_extract":
        d = task["folder"]
        return [("local", _pack_cmd(fmt, f"{lp}/{d}", lp, d, quirks)),
                ("local", f"scp {lp}/{d}{ext} {login}:{ra}/"),
                ("remote", _extract_cmd(fmt, f"{ra}/{d}{ext}", rp, quirks))]
    if kind == "download_rename":
        return [("local", f"scp {login}:{rp}/{task['file']} {lp}/{task['new']}")]
    if kind == "backup_upload":
        return [("remote", f"mv {rp}/{task['file']} {rp}/{task['new']}"),
                ("local", f"scp {lp}/{task['file']} {login}:{rp}/")]
    return []


def setup_facts(setup: dict[str, Any]) -> dict[str, str]:
    """The true facts of a machine setup (what the oracle knows)."""
    srv = setup["server"]
    return {"login": f"{srv['user']}@{srv['host']}", "local projects": f"~/{setup['projects_dir']}",
            "local archives": f"~/{setup['archive_dir']}", "archive format": setup["format"],
            "server projects": srv["root"], "server archives": srv["archives"]}


# -- agents ----------------------------------------------------------------------------------------
class RandomAgent:
    """Random commands from the supported set with random paths: the chance level."""

    COMMANDS = ("cd", "ls", "ls -l", "pwd", "cat", "mkdir", "mkdir -p", "cp", "cp -r", "mv", "rm", "rm -r",
                "chmod 755", "tar -czf", "tar -xzf", "zip -r", "unzip", "ssh", "scp", "scp -r", "exit", "help")

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.names = ["~", ".", "..", "/", "tmp", "data", "docs"]

    def act(self, hints: str, observation: str) -> str:
        self.names += re.findall(r"`([^`]+)`", observation)[:4]
        dirs, files = parse_listing(command_output(observation))
        self.names += (dirs + files)[:6]
        cmd = str(self.rng.choice(self.COMMANDS))
        if cmd in ("pwd", "exit", "help"):
            n_args = 0
        elif cmd.split()[0] in ("cp", "mv", "scp"):
            n_args = 2
        else:
            n_args = int(self.rng.integers(0, 2)) if cmd.startswith("ls") else 1
        args = []
        for _ in range(n_args):
            parts = [str(self.rng.choice(self.names)) for _ in range(int(self.rng.integers(1, 3)))]
            args.append("/".join(parts))
        if cmd.startswith("tar -c") and args:
            args = [args[0] + ".tar.gz", args[0]]
        if cmd == "ssh":
            args = [str(self.rng.choice(("deploy@server", "ops@node1.lab.example", "admin@localhost")))]
        return _ANSWER.format(" ".join([cmd] + args))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class LearnerAgent:
    """Explores for missing facts, then runs :func:`plan`, fixing quirk errors on the way.

    With ``known`` facts and all quirks (the oracle) it runs the plan straight away.
    """

    def __init__(self, rng: np.random.Generator, known: dict[str, str] | None = None,
                 task: dict[str, Any] | None = None, all_quirks: bool = False) -> None:
        self.rng = rng
        self.oracle = known is not None
        self.facts: dict[str, str] = dict(known or {})
        self.quirks: set[str] = set(QUIRKS) if all_quirks else set()
        self.task = task
        self.script: Script | None = None
        self.where = "local"
        self.home_dirs: list[str] | None = None
        self.home_files: list[str] | None = None
        self.last = ""

    # -- the per-turn protocol ----------------------------------------------------------------
    def act(self, hints: str, observation: str) -> str:
        if self.script is None:
            if not self.oracle:
                facts, quirks = parse_hints(hints)
                self.facts.update(facts)
                self.quirks |= quirks
            if self.task is None:
                self.task = parse_task(observation)
            self.script = self._play()
            cmd = next(self.script, "done")
        else:
            out = command_output(observation)
            self._learn_text(out)
            try:
                cmd = self.script.send(out)
            except StopIteration:
                cmd = "done"
        self.last = cmd
        return _ANSWER.format(cmd)

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        old_facts, old_quirks = parse_hints(hints)
        if transcript:
            self._learn_report(transcript[-1].feedback)
        facts = {**old_facts, **self.facts}
        quirks = old_quirks | self.quirks
        lines = [f"{k}: {facts[k]}" for k in FACTS if k in facts]
        lines += [f"quirk: {QUIRKS[q]}" for q in QUIRKS if q in quirks]
        return "\n".join(lines)

    # -- learning from text -------------------------------------------------------------------
    def _learn_text(self, text: str) -> None:
        m = _LOGIN_RE.search(text)
        if m:
            self.facts["login"] = m.group(1)
        m = _LOCAL_ARCH_RE.search(text)
        if m:
            self.facts["local archives"] = m.group(1).replace("\\", "/")
            self.facts["archive format"] = m.group(2)
        m = _TEAM_RE.search(text)
        if m:
            self.facts["team"] = m.group(1)
        m = _TEAMS_DIR_RE.search(text)
        if m:
            self.facts["team folders"] = m.group(1)

    def _learn_report(self, feedback: str) -> None:
        """Facts given away by the final goal report's check lines."""
        task = self.task or {}
        proj = task.get("project")
        for line in feedback.splitlines():
            m = _CHECK_RE.match(line)
            if not m or not proj:
                continue
            where, rest = m.group(2).replace("\\", "/"), m.group(3)
            login, sep, path = where.partition(":") if "@" in where.split("/")[0] else ("", "", where)
            if sep:
                self.facts["login"] = login
            arch = _ARCH_CHECK_RE.search(rest)
            if arch:
                folder_dir = path.rsplit("/", 1)[0]
                self.facts["archive format"] = arch.group(1)
                self.facts["server archives" if sep else "local archives"] = folder_dir
                continue
            marker = f"/{proj}/"
            if marker in path:
                self.facts["server projects" if sep else "local projects"] = path.split(marker)[0]

    # -- the script -----------------------------------------------------------------------------
    def _play(self) -> Script:
        task = self.task
        if task is None:
            yield "help"
            return
        for _ in range(3):  # explore, run the plan; re-explore once if a fact proved wrong
            yield from self._explore(needs(task))
            failed = yield from self._run_plan(task)
            if not failed:
                break
        yield "done"

    def _explore(self, wanted: set[str]) -> Script:
        missing = wanted - set(self.facts)
        if missing & {"login", "local archives", "archive format"}:
            yield from self._read_note()
        if "local projects" in missing:
            yield from self._find_projects()
        if (wanted - set(self.facts)) & {"server projects", "server archives"}:
            yield from self._explore_server(wanted)

    def _goto(self, where: str) -> Script:
        if where == self.where:
            return
        if where == "local":
            yield "exit"
            self.where = "local"
            return
        if "login" not in self.facts:
            yield from self._read_note()
        out = yield f"ssh {self.facts.get('login', 'server')}"
        if "Welcome to" in out:
            self.where = "remote"
        else:
            self.facts.pop("login", None)

    def _read_note(self) -> Script:
        yield from self._goto("local")
        if self.home_files is None:
            out = yield "ls ~"
            self.home_dirs, self.home_files = parse_listing(out)
        def rank(name: str) -> int:
            low = name.lower()
            return 0 if any(w in low for w in ("readme", "note", "server")) else 1 if low.endswith(".txt") else 2
        for name in sorted(self.home_files, key=rank)[:3]:
            if rank(name) == 2:
                break
            out = yield f"cat ~/{name}"
            if _LOGIN_RE.search(out):
                return

    def _find_projects(self) -> Script:
        proj = (self.task or {}).get("project", "")
        yield from self._goto("local")
        if self.home_dirs is None:
            out = yield "ls ~"
            self.home_dirs, self.home_files = parse_listing(out)

        def rank(name: str, likely: tuple[str, ...]) -> int:
            return 0 if name in likely else 3 if name in _STANDARD else 2 if name.startswith(".") else 1
        queue = [f"~/{d}" for d in sorted(self.home_dirs, key=lambda d: rank(d, _LIKELY_TOP))]
        for _ in range(8):
            if not queue:
                return
            path = queue.pop(0)
            out = yield f"ls {path}"
            dirs, _ = parse_listing(out)
            if proj in dirs:
                self.facts["local projects"] = path
                return
            if path.count("/") < 2:
                subs = [f"{path}/{d}" for d in sorted(dirs, key=lambda d: rank(d, _LIKELY_SUB))]
                likely = [s for s in subs if s.rsplit("/", 1)[-1] in _LIKELY_SUB]
                queue = likely + queue + [s for s in subs if s not in likely]

    def _explore_server(self, wanted: set[str]) -> Script:
        if "login" not in self.facts or "team" not in self.facts:
            yield from self._read_note()
        yield from self._goto("remote")
        if self.where != "remote":
            return
        if "team folders" not in self.facts:
            out = yield "ls"
            _, files = parse_listing(out)
            for name in sorted(files, key=lambda f: 0 if any(w in f.lower() for w in ("readme", "welcome")) else 1)[:2]:
                out = yield f"cat {name}"
                if _TEAMS_DIR_RE.search(out):
                    break
        if "team folders" not in self.facts:
            return
        team_dir = f"{self.facts['team folders']}/{self.facts.get('team', '')}"
        out = yield f"ls {team_dir}"
        dirs, _ = parse_listing(out)
        want_archives = "server archives" in wanted and "server archives" not in self.facts

        def rank(d: str) -> int:
            archive_like = any(w in d.lower() for w in ("archiv", "backup", "snapshot"))
            return 0 if archive_like == want_archives else 1
        proj = (self.task or {}).get("project", "")
        for d in sorted(dirs, key=rank):
            if not (wanted - set(self.facts)) & {"server projects", "server archives"}:
                return
            out = yield f"ls {team_dir}/{d}"
            sub_dirs, sub_files = parse_listing(out)
            if proj in sub_dirs:
                self.facts["server projects"] = f"{team_dir}/{d}"
            exts = [m.group(1) for m in map(_ARCHIVE_EXT_RE.search, sub_files) if m]
            if exts:
                self.facts["server archives"] = f"{team_dir}/{d}"
                self.facts.setdefault("archive format", exts[0])

    def _run_plan(self, task: dict[str, Any]) -> Generator[str, str, bool]:
        """Run the plan; True when it failed for a reason the learner could not fix (facts reset)."""
        steps = plan(task, self.facts, self.quirks)
        i = 0
        retries = 0
        while i < len(steps):
            where, cmd = steps[i]
            yield from self._goto(where)
            if self.where != where:
                return True
            out = yield cmd
            fixed = self._fix(task, cmd, out)
            if fixed is None:
                if _is_error(out):
                    self._forget(cmd)
                    return True
                i += 1
                continue
            retries += 1
            if retries > 4:
                return True
            steps = plan(task, self.facts, self.quirks)
            i = fixed if fixed >= 0 else i
        if not self.oracle and task["kind"] in ("download_extract", "pack_upload_extract") \
                and "extract_cd" not in self.quirks:
            # Still running after extracting: the files went into the wrong folder.
            self.quirks.add("extract_cd")
            steps = plan(task, self.facts, self.quirks)
            where, cmd = steps[-1]
            yield from self._goto(where)
            yield cmd
        return False

    def _fix(self, task: dict[str, Any], cmd: str, out: str) -> int | None:
        """Learn a quirk from ``out``; the step to redo (-1: the same one), or None if nothing to fix."""
        if "not a regular file" in out and "scp_r" not in self.quirks:
            self.quirks.add("scp_r")
            return -1
        if "chmod: invalid mode" in out and "chmod_digits" not in self.quirks:
            self.quirks.add("chmod_digits")
            return -1
        if cmd.startswith("mkdir ") and "No such file or directory" in out and "mkdir_p" not in self.quirks:
            self.quirks.add("mkdir_p")
            return -1
        if "without -r only the empty folder" in out and "zip_r" not in self.quirks:
            self.quirks.add("zip_r")
            return -1
        if cmd.startswith("scp") and task["kind"] == "mkdir_upload" and "No such file or directory" in out \
                and "scp_parent" not in self.quirks:
            self.quirks.add("scp_parent")
            return 0
        return None

    def _forget(self, cmd: str) -> None:
        """A command built from remembered facts failed: forget the facts it used."""
        if self.oracle:
            return
        for key in ("login", "local projects", "server projects", "server archives", "local archives"):
            if key in self.facts and self.facts[key] in cmd:
                del self.facts[key]
        if "archive format" in self.facts and ("tar" in cmd or "zip" in cmd):
            del self.facts["archive format"]
        self.home_dirs = self.home_files = None


def _is_error(out: str) -> bool:
    low = out.lower()
    return any(s in low for s in ("no such file", "cannot", "could not resolve", "permission denied",
                                  "not found", "not recognized", "is not a", "must be named", "does not look",
                                  "not a directory", "missing"))


class OracleAgent(LearnerAgent):
    """The learner given the true setup, the task's parameters and every quirk."""

    def __init__(self, pack: Pack, rng: np.random.Generator) -> None:
        super().__init__(rng, known={}, all_quirks=True)
        self.pack = pack

    def act(self, hints: str, observation: str) -> str:
        if self.script is None:
            spec = next((t.spec for t in self.pack.tasks if t.spec["description"] in observation), None)
            if spec is not None:
                setup = spec.get("setup") or self.pack.world["setup"]
                self.facts = setup_facts(setup)
                self.task = {"kind": spec["kind"], **spec["params"]}
                if "mode" in self.task:
                    self.task["rwx"] = MODES[self.task["mode"]]
        return super().act(hints, observation)

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


def explorer_commands(setup: dict[str, Any], task: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(exploring commands, solving commands) of a lucky explorer: one that knows nothing but
    always looks into the right folder first, and chains commands with ``&&`` where it can.

    It reads the setup only to pick its guesses; every fact its solving commands use is printed by
    one of its exploring commands. Proves that a task can be solved within the turn limit by
    exploring alone (see the tests).
    """
    facts = setup_facts(setup)
    srv = setup["server"]
    need = needs(task)
    remote = bool(need & {"server projects", "server archives"})
    top = setup["projects_dir"].split("/")[0]
    explore = ["ls ~"]
    second = [f"cat ~/{setup['note']}"] if remote or need & {"login", "local archives", "archive format"} else []
    if "local projects" in need:
        second.append(f"ls ~/{top}")
    if second:
        explore.append(" && ".join(second))
    if "local projects" in need:
        explore.append(f"ls ~/{setup['projects_dir']}")
    where = "local"
    if remote:
        explore += [f"ssh {facts['login']}", "ls", f"cat {srv['readme']} && ls {srv['teams_dir']}/{srv['team']}"]
        looks = [f"ls {srv[k]}" for k, f in (("root", "server projects"), ("archives", "server archives")) if f in need]
        explore.append(" && ".join(looks))
        where = "remote"
    solve: list[str] = []
    group: list[str] = []
    for machine, cmd in plan(task, facts, set(QUIRKS)):
        if machine != where:
            if group:
                solve.append(" && ".join(group))
                group = []
            solve.append("exit" if machine == "local" else f"ssh {facts['login']}")
            where = machine
        group.append(cmd)
    if group:
        solve.append(" && ".join(group))
    return explore, solve


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> OracleAgent:
    return OracleAgent(pack, rng)


def learner_agent(pack: Pack, rng: np.random.Generator) -> LearnerAgent:
    return LearnerAgent(rng)
