"""Machine setups, task generators and goal checks of the Terminal environment.

A *setup* is everything about the two machines that a task description does not say and that an
agent can find out by exploring: the local operating-system flavour, the server's login
(``user@host``), where project folders live on each side, and the site's archive convention
(which folder archives go into on each side and their format). A pack shares one setup (or draws
one per task with ``shared_setup=False``). Where each fact can be found:

* the server login, the team's name on the server and the local archive convention (folder,
  format): a note file in the local home folder;
* the local projects folder: only by looking around (``ls``) below the home folder, among decoy
  folders;
* the server's team folders: a README in the server user's home folder; which subfolder of the
  team folder holds the projects and which the archives: only by looking around there.

Setup format (JSON)::

    {"os": "linux", "user": "ana", "host": "devbox", "home": "/home/ana",
     "projects_dir": "work/clients", "note": "README.txt", "archive_dir": "backups", "format": "tar.gz",
     "projects": ["atlas", "cobalt", "kite"],
     "server": {"user": "deploy", "host": "node7.lab.example", "home": "/home/deploy",
                "readme": "README.txt", "team": "blue", "teams_dir": "/srv",
                "root": "/srv/blue/files", "archives": "/srv/blue/snapshots"},
     "local_tree": [[path, content_or_null, mode_or_null], ...], "remote_tree": [...]}

Paths in a setup are POSIX paths; the Windows flavour shows ``/Users/ana`` as ``C:\\Users\\ana``.

A task spec holds ``kind`` (one of :data:`TASK_KINDS`), ``description`` (what the agent reads),
``params`` (the task's names: project, file, folder, ...), the task's own files
(``local_files``/``remote_files``, same rows as the trees; an archive row has a dict
``{"format", "entries"}`` as its content) and the goal ``checks`` (see :func:`evaluate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codrl.envs.terminal.fs import Dir, File, FileSystem, walk_entries
from codrl.envs.terminal.shell import Machine, Shell

#: The 9 single and 8 composite task kinds.
SINGLE_KINDS = ("upload", "download", "rename", "move", "chmod", "delete", "copy", "pack", "mkdir")
COMPOSITE_KINDS = ("pack_upload", "download_extract", "mkdir_upload", "upload_chmod", "upload_delete",
                   "pack_upload_extract", "download_rename", "backup_upload")
TASK_KINDS = SINGLE_KINDS + COMPOSITE_KINDS

OS_NAMES = {"linux": "Linux", "macos": "macOS", "windows": "Windows (PowerShell)"}
EXTENSIONS = {"tar.gz": ".tar.gz", "tar": ".tar", "zip": ".zip"}

_USERS = ("ana", "ben", "chloe", "dario", "eli", "farah", "gus", "hana", "ivan", "jo", "kai", "lena", "mo",
          "nia", "omar", "pia", "raj", "sam", "tess", "uma", "vic", "wen", "yuri", "zoe")
_SERVER_USERS = ("deploy", "ops", "www", "data", "build", "admin", "svc", "research", "team", "lab")
_HOST_WORDS = ("node", "srv", "box", "core", "vm", "lab", "hub", "store")
_DOMAINS = ("lab.example", "corp.example", "uni.example", "dev.example", "int.example")
_TEAMS = ("blue", "red", "green", "orion", "vega", "lynx", "delta", "kite", "ember", "fjord", "nova", "polar")
_PROJECTS = ("atlas", "borealis", "cobalt", "dune", "echo", "falcon", "granite", "harbor", "iris", "juniper",
             "kestrel", "lumen", "meridian", "nimbus", "onyx", "pylon", "quartz", "rook", "sierra", "tundra")
_LOCAL_HOSTS = {"linux": ("laptop", "devbox", "thinkpad", "workstation", "desk"),
                "macos": ("{u}-mbp", "{u}-air", "{u}-mac"), "windows": ("DESKTOP-4F2K", "LAPTOP-ZX81")}
_HOMES = {"linux": "/home/{u}", "macos": "/Users/{u}", "windows": "/Users/{u}"}
_STANDARD = {"linux": ("Desktop", "Documents", "Downloads", "Music", "Pictures"),
             "macos": ("Desktop", "Documents", "Downloads", "Movies", "Music", "Pictures"),
             "windows": ("Desktop", "Documents", "Downloads", "Music", "Pictures", "Videos")}
_PROJECT_DIRS = {"linux": ("work/projects", "work/clients", "code/active", "dev/projects", "src/team",
                           "Documents/projects"),
                 "macos": ("Developer/projects", "Projects/active", "work/clients", "code/team", "Documents/work"),
                 "windows": ("source/repos", "Documents/projects", "work/clients", "Projects/active", "dev/team")}
_DECOY_SUBDIRS = ("old", "scratch", "tools", "personal", "archive-2019", "forks", "experiments", "sandbox")
_MISC_SUBDIRS = ("letters", "taxes", "holiday", "receipts", "books", "misc", "photos", "screenshots",
                 "installers", "recipes")
_NOTE_NAMES = ("README.txt", "notes.txt", "servers.txt")
_OTHER_NOTES = ("todo.txt", "shopping.txt", "ideas.txt")
_ARCHIVE_DIRS = ("archives", "backups", "Archive", "saved")
_SERVER_READMES = ("README.txt", "WELCOME.txt", "README")
_TEAM_PARENTS = ("/srv", "/data", "/var/share", "/opt/teams", "/mnt/shared")
_PROJECT_SUBS = ("projects", "share", "files", "work", "current")
_ARCHIVE_SUBS = ("archives", "backups", "_archive", "snapshots")
_TEAM_DECOYS = ("tmp", "scratch", "old", "incoming", "public", "misc")
_DECOY_TOPS = ("code", "dev", "work", "src", "Projects", "repos", "git", "sandbox")

_FILES = ("report.md", "summary.txt", "results.csv", "notes.txt", "data.json", "budget.csv", "draft.md",
          "plan.txt", "metrics.json", "changelog.md", "todo.md", "invoice.txt", "minutes.md", "survey.csv",
          "figures.txt", "abstract.md", "inventory.csv", "schedule.txt")
_SCRIPTS = ("run.sh", "deploy.sh", "build.sh", "backup.sh", "sync.sh", "start.sh", "check.sh", "clean.sh")
_CONFIGS = ("config.yml", "settings.ini", "app.conf", "params.json", "env.cfg")
_FOLDERS = ("data", "logs", "src", "assets", "results", "figures", "raw", "exports", "drafts", "scans",
            "slides", "models")
_NESTED = ("2024", "2025", "q1", "q2", "q3", "q4", "incoming", "final", "v2", "batch7", "review", "january",
           "march", "shared", "tmp")
_DISTRACTORS = ("old.txt", "readme-old.md", "scratch.txt", "tmp.log", "copy.csv", "backup.md", "notes-2.txt",
                "draft-old.md", "x.tmp", "test.txt", "list.txt", "misc.json")
_WORDS = ("alpha", "budget", "north", "sample", "review", "final", "total", "draft", "green", "index", "cycle",
          "batch", "delta", "signal", "vector", "window", "record", "margin", "border", "column")
#: Target modes of chmod tasks: octal -> who gets what.
MODES = {"755": "rwxr-xr-x", "750": "rwxr-x---", "700": "rwx------", "744": "rwxr--r--", "640": "rw-r-----",
          "600": "rw-------", "775": "rwxrwxr-x", "711": "rwx--x--x"}


def _pick(rng: np.random.Generator, seq: tuple[str, ...] | list[str], k: int | None = None) -> Any:
    if k is None:
        return seq[int(rng.integers(len(seq)))]
    idx = rng.choice(len(seq), size=k, replace=False)
    return [seq[int(i)] for i in idx]


def _text(rng: np.random.Generator, label: str) -> str:
    lines = [f"{label}: {_pick(rng, _WORDS)} {_pick(rng, _WORDS)} {int(rng.integers(10, 10_000))}"
             for _ in range(int(rng.integers(1, 4)))]
    return "\n".join(lines) + "\n"


def rwx_words(mode: str) -> str:
    """``rwxr-x---`` -> ``owner: read, write, execute; group: read, execute; others: nothing``."""
    rwx = MODES.get(mode, mode)
    names = {"r": "read", "w": "write", "x": "execute"}
    parts = []
    for who, chunk in zip(("owner", "group", "others"), (rwx[0:3], rwx[3:6], rwx[6:9]), strict=True):
        can = [names[c] for c in chunk if c != "-"]
        parts.append(f"{who}: {', '.join(can) if can else 'nothing'}")
    return "; ".join(parts)


# -- setups ----------------------------------------------------------------------------------------
def sample_setup(rng: np.random.Generator, flavours: tuple[str, ...]) -> dict[str, Any]:
    """Draw one machine setup (see the module docstring for its format)."""
    os_ = str(_pick(rng, flavours))
    user = str(_pick(rng, _USERS))
    host = str(_pick(rng, _LOCAL_HOSTS[os_])).format(u=user)
    home = _HOMES[os_].format(u=user)
    projects_dir = str(_pick(rng, _PROJECT_DIRS[os_]))
    fmt = "zip" if os_ == "windows" else str(_pick(rng, ("tar.gz", "tar", "zip")))
    ext = EXTENSIONS[fmt]
    archive_dir = str(_pick(rng, _ARCHIVE_DIRS))
    note = str(_pick(rng, _NOTE_NAMES))
    team, other_team = (str(t) for t in _pick(rng, _TEAMS, 2))
    ruser = str(_pick(rng, _SERVER_USERS))
    rhost = f"{_pick(rng, _HOST_WORDS)}{int(rng.integers(1, 40))}.{_pick(rng, _DOMAINS)}"
    rhome = f"/home/{ruser}"
    parent = str(_pick(rng, _TEAM_PARENTS))
    root = f"{parent}/{team}/{_pick(rng, _PROJECT_SUBS)}"
    archives = f"{parent}/{team}/{_pick(rng, _ARCHIVE_SUBS)}"
    readme = str(_pick(rng, _SERVER_READMES))
    projects = [str(p) for p in _pick(rng, _PROJECTS, 6)]
    projects, other_projects = projects[:3], projects[3:]
    sep = "\\" if os_ == "windows" else "/"

    local: list[list[Any]] = []
    for d in _STANDARD[os_]:
        local.append([f"{home}/{d}", None, None])
        for sub in _pick(rng, _MISC_SUBDIRS, int(rng.integers(0, 3))):
            local.append([f"{home}/{d}/{sub}/{_pick(rng, _DISTRACTORS)}", _text(rng, sub), None])
    top, leaf = projects_dir.split("/")
    for sub in _pick(rng, [s for s in _DECOY_SUBDIRS if s != leaf], int(rng.integers(1, 3))):
        local.append([f"{home}/{top}/{sub}/{_pick(rng, _DISTRACTORS)}", _text(rng, sub), None])
    for decoy in _pick(rng, [d for d in _DECOY_TOPS if d != top and d not in _STANDARD[os_]], int(rng.integers(1, 3))):
        for sub in _pick(rng, _DECOY_SUBDIRS, int(rng.integers(1, 3))):
            local.append([f"{home}/{decoy}/{sub}/{_pick(rng, _DISTRACTORS)}", _text(rng, sub), None])
    for proj in projects:
        local.append([f"{home}/{projects_dir}/{proj}/README.md", f"# {proj}\n" + _text(rng, "status"), None])
    local.append([f"{home}/{note}", (
        f"Team server: {ruser}@{rhost}\n"
        f"Our team on the server: {team}\n"
        f"Archives on this machine go in ~{sep}{archive_dir}: one {fmt} archive per folder, named after "
        f"the folder (for example photos{ext}).\n"), None])
    other = str(_pick(rng, _OTHER_NOTES))
    local.append([f"{home}/{other}", _text(rng, "todo"), None])
    old = str(_pick(rng, ("photos", "thesis", "receipts", "music")))
    local.append([f"{home}/{archive_dir}/{old}{ext}", {"format": fmt, "entries": {
        f"{old}/": None, f"{old}/{_pick(rng, _DISTRACTORS)}": _text(rng, old)}}, None])
    if os_ == "windows":
        local += [["/Windows/System32", None, None], ["/Program Files/Git", None, None]]
    else:
        local.append([f"{home}/.{'zshrc' if os_ == 'macos' else 'bashrc'}", "# shell settings\n", None])
        local.append(["/tmp", None, None])

    remote: list[list[Any]] = [
        [f"{rhome}/{readme}", (
            f"{rhost}\n"
            f"Team folders are in {parent}/<team>. Each team folder holds the team's project folders "
            "(in one subfolder) and its archives (in another).\n"), None],
        [f"{rhome}/.bashrc", "# shell settings\n", None],
        ["/etc/hostname", rhost + "\n", None],
        ["/tmp", None, None],
        ["/var/log/syslog", "boot ok\n", None],
        ["/opt/tools/bin", None, None],
        [f"{parent}/{other_team}/{_pick(rng, _PROJECT_SUBS)}/{other_projects[0]}/README.md",
         f"# {other_projects[0]}\n", None],
    ]
    for proj in projects:
        remote.append([f"{root}/{proj}/README.md", f"# {proj} (server copy)\n" + _text(rng, "status"), None])
    for proj in other_projects[1:]:
        remote.append([f"{parent}/{team}/{_pick(rng, _TEAM_DECOYS)}/{proj}-notes.txt", _text(rng, proj), None])
    old = str(_pick(rng, ("oldsite", "legacy", "import")))
    remote.append([f"{archives}/{old}{ext}", {"format": fmt, "entries": {
        f"{old}/": None, f"{old}/{_pick(rng, _DISTRACTORS)}": _text(rng, old)}}, None])
    return {"os": os_, "user": user, "host": host, "home": home, "projects_dir": projects_dir, "note": note,
            "archive_dir": archive_dir, "format": fmt, "projects": projects,
            "server": {"user": ruser, "host": rhost, "home": rhome, "readme": readme, "team": team,
                       "teams_dir": parent, "root": root, "archives": archives},
            "local_tree": local, "remote_tree": remote}


def _lay_out(fs: FileSystem, rows: list[list[Any]]) -> None:
    for path, content, mode in rows:
        if isinstance(content, dict):
            fs.write(path, "", mode, archive={"format": content["format"], "entries": dict(content["entries"])})
        else:
            fs.write(path, content, None if mode is None else int(str(mode), 8))


def build_shell(setup: dict[str, Any], spec: dict[str, Any]) -> Shell:
    """The two machines of ``setup`` with the files of task ``spec``, logged in locally at home."""
    local_fs = FileSystem(setup["home"])
    _lay_out(local_fs, setup["local_tree"])
    _lay_out(local_fs, spec.get("local_files", []))
    srv = setup["server"]
    remote_fs = FileSystem(srv["home"])
    _lay_out(remote_fs, setup["remote_tree"])
    _lay_out(remote_fs, spec.get("remote_files", []))
    return Shell(Machine(setup["os"], setup["user"], setup["host"], local_fs),
                 Machine("server", srv["user"], srv["host"], remote_fs))


# -- tasks -----------------------------------------------------------------------------------------
def local_project(setup: dict[str, Any], project: str) -> str:
    return f"{setup['home']}/{setup['projects_dir']}/{project}"


def remote_project(setup: dict[str, Any], project: str) -> str:
    return f"{setup['server']['root']}/{project}"


def archive_name(setup: dict[str, Any], folder: str) -> str:
    return folder + EXTENSIONS[setup["format"]]


class _TaskBuilder:
    """Collects the files and checks of one task while its kind's generator runs."""

    def __init__(self, setup: dict[str, Any], rng: np.random.Generator, max_distractors: int) -> None:
        self.setup = setup
        self.rng = rng
        self.max_distractors = max_distractors
        self.files: dict[str, list[list[Any]]] = {"local": [], "remote": []}
        self.checks: list[dict[str, Any]] = []
        self.used: set[str] = {"README.md"}

    def name(self, pool: tuple[str, ...]) -> str:
        choices = [p for p in pool if p not in self.used]
        out = str(_pick(self.rng, choices))
        self.used.add(out)
        return out

    def add(self, side: str, path: str, content: Any = None, mode: str | None = None) -> Any:
        if content is None:
            content = _text(self.rng, path.rsplit("/", 1)[-1].split(".")[0])
        self.files[side].append([path, content, mode])
        return content

    def folder(self, side: str, path: str) -> dict[str, str | None]:
        """Fill a folder with 2-3 files; return its archive entries (named after the folder)."""
        name = path.rsplit("/", 1)[-1]
        tree: dict[str, str | None] = {f"{name}/": None}
        for f in _pick(self.rng, _FILES, int(self.rng.integers(2, 4))):
            tree[f"{name}/{f}"] = self.add(side, f"{path}/{f}")
        return dict(sorted(tree.items()))

    def distractors(self, side: str, folder: str) -> None:
        for d in _pick(self.rng, _DISTRACTORS, int(self.rng.integers(0, self.max_distractors + 1))):
            if d in self.used:
                continue
            self.used.add(d)
            content = self.add(side, f"{folder}/{d}")
            self.check("file", side, f"{folder}/{d}", content=content, note="unchanged")

    def check(self, kind: str, side: str, path: str, **extra: Any) -> None:
        self.checks.append({"kind": kind, "machine": side, "path": path, **extra})


def _where(side: str) -> str:
    return "on your machine" if side == "local" else "on the team server"


def sample_task(setup: dict[str, Any], rng: np.random.Generator, kinds: tuple[str, ...],
                max_distractors: int) -> dict[str, Any]:
    """Draw one task of a kind in ``kinds`` inside ``setup`` (see the module docstring)."""
    kind = str(_pick(rng, kinds))
    b = _TaskBuilder(setup, rng, max_distractors)
    proj = str(_pick(rng, setup["projects"]))
    lp, rp = local_project(setup, proj), remote_project(setup, proj)
    windows = setup["os"] == "windows"
    side = "remote" if kind == "chmod" and windows else str(_pick(rng, ("local", "remote")))
    xp = lp if side == "local" else rp
    where = _where(side)
    arch_local = f"{setup['home']}/{setup['archive_dir']}"
    arch_remote = setup["server"]["archives"]
    p: dict[str, Any] = {"project": proj}
    desc = ""
    if kind in ("upload", "download"):
        src, dst, sp, dp = ("local", "remote", lp, rp) if kind == "upload" else ("remote", "local", rp, lp)
        if rng.random() < 0.35:  # a whole folder (scp needs -r)
            d = p["folder"] = b.name(_FOLDERS)
            for e, text in b.folder(src, f"{sp}/{d}").items():
                if text is not None:
                    b.check("file", dst, f"{dp}/{e}", content=text)
            what = f"the `{d}` folder"
            lacks = f"a folder `{d}`"
        else:
            f = p["file"] = b.name(_FILES)
            b.check("file", dst, f"{dp}/{f}", content=b.add(src, f"{sp}/{f}"))
            what = f"`{f}`"
            lacks = f"a file `{f}`"
        b.distractors(src, sp)
        if kind == "upload":
            desc = f"Upload {what} from your local copy of project `{proj}` to the project's folder on the team server."
        else:
            desc = (f"The team server's copy of project `{proj}` has {lacks} that your local copy lacks. "
                    "Download it into your local copy of the project.")
    elif kind == "rename":
        p["side"] = side
        f = p["file"] = b.name(_FILES)
        g = p["new"] = "final-" + f
        content = b.add(side, f"{xp}/{f}")
        b.distractors(side, xp)
        b.check("file", side, f"{xp}/{g}", content=content)
        b.check("absent", side, f"{xp}/{f}")
        desc = f"In project `{proj}` {where}, rename `{f}` to `{g}`."
    elif kind == "move":
        p["side"] = side
        f = p["file"] = b.name(_FILES)
        sub = p["sub"] = b.name(_FOLDERS)
        content = b.add(side, f"{xp}/{f}")
        b.add(side, f"{xp}/{sub}/{b.name(_FILES)}")
        b.distractors(side, xp)
        b.check("file", side, f"{xp}/{sub}/{f}", content=content)
        b.check("absent", side, f"{xp}/{f}")
        desc = f"In project `{proj}` {where}, move `{f}` into the project's `{sub}` subfolder."
    elif kind == "chmod":
        p["side"] = side
        f = p["file"] = b.name(_SCRIPTS)
        mode = p["mode"] = str(_pick(rng, tuple(MODES)))
        b.add(side, f"{xp}/{f}", "#!/bin/sh\necho running\n", "644")
        b.distractors(side, xp)
        b.check("mode", side, f"{xp}/{f}", mode=mode)
        desc = (f"In project `{proj}` {where}, set the permissions of `{f}` to {MODES[mode]} "
                f"({rwx_words(mode)}).")
    elif kind == "delete":
        p["side"] = side
        if rng.random() < 0.5:
            t = p["target"] = b.name(_FOLDERS)
            b.folder(side, f"{xp}/{t}")
            what = "folder"
        else:
            t = p["target"] = b.name(_FILES)
            b.add(side, f"{xp}/{t}")
            what = "file"
        b.distractors(side, xp)
        b.check("absent", side, f"{xp}/{t}")
        desc = f"In project `{proj}` {where}, delete the {what} `{t}` and leave everything else as it is."
    elif kind == "copy":
        p["side"] = side
        f = p["file"] = b.name(_CONFIGS)
        g = p["new"] = f + ".bak"
        content = b.add(side, f"{xp}/{f}")
        b.distractors(side, xp)
        b.check("file", side, f"{xp}/{g}", content=content)
        b.check("file", side, f"{xp}/{f}", content=content, note="unchanged")
        desc = f"In project `{proj}` {where}, make a copy of `{f}` named `{g}` next to it."
    elif kind == "pack":
        d = p["folder"] = b.name(_FOLDERS)
        entries = b.folder("local", f"{lp}/{d}")
        b.check("archive", "local", f"{arch_local}/{archive_name(setup, d)}", format=setup["format"],
                entries=entries)
        desc = (f"Archive the `{d}` folder of your local copy of project `{proj}` following the site's "
                "convention (where archives are kept on your machine, their format and their name).")
    elif kind == "mkdir":
        p["side"] = side
        path = p["path"] = "/".join(_pick(rng, _NESTED, 3))
        b.check("dir", side, f"{xp}/{path}")
        desc = f"In project `{proj}` {where}, create the nested folder `{path}` (none of its folders exist yet)."
    elif kind == "pack_upload":
        d = p["folder"] = b.name(_FOLDERS)
        entries = b.folder("local", f"{lp}/{d}")
        b.check("archive", "remote", f"{arch_remote}/{archive_name(setup, d)}", format=setup["format"],
                entries=entries)
        desc = (f"Archive the `{d}` folder of your local copy of project `{proj}` following the site's archive "
                "convention, and put the archive into the team server's archive folder.")
    elif kind == "download_extract":
        d = p["folder"] = b.name(_FOLDERS)
        entries = {}
        for f in _pick(rng, _FILES, int(rng.integers(2, 4))):
            text = _text(rng, f.split(".")[0])
            entries[f"{d}/{f}"] = text
            b.check("file", "local", f"{lp}/{d}/{f}", content=text)
        entries[f"{d}/"] = None
        entries = dict(sorted(entries.items()))
        b.add("remote", f"{arch_remote}/{archive_name(setup, d)}", {"format": setup["format"], "entries": entries})
        desc = (f"The team server's archive folder holds an archive of the `{d}` folder of project `{proj}`. "
                "Download it and unpack it inside your local copy of the project, so that the project "
                f"contains `{d}`.")
    elif kind == "mkdir_upload":
        f = p["file"] = b.name(_FILES)
        path = p["path"] = "/".join(_pick(rng, _NESTED, 2))
        content = b.add("local", f"{lp}/{f}")
        b.distractors("local", lp)
        b.check("file", "remote", f"{rp}/{path}/{f}", content=content)
        desc = (f"Upload `{f}` from your local copy of project `{proj}` into the folder `{path}` inside the "
                "project's folder on the team server. That folder does not exist yet.")
    elif kind == "upload_chmod":
        f = p["file"] = b.name(_SCRIPTS)
        mode = p["mode"] = str(_pick(rng, tuple(MODES)))
        content = b.add("local", f"{lp}/{f}", "#!/bin/sh\necho " + _pick(rng, _WORDS) + "\n", "644")
        b.check("file", "remote", f"{rp}/{f}", content=content)
        b.check("mode", "remote", f"{rp}/{f}", mode=mode)
        desc = (f"Upload `{f}` from your local copy of project `{proj}` to the project's folder on the team "
                f"server, and set its permissions there to {MODES[mode]} ({rwx_words(mode)}).")
    elif kind == "upload_delete":
        f = p["file"] = b.name(_FILES)
        content = b.add("local", f"{lp}/{f}")
        b.distractors("local", lp)
        b.check("file", "remote", f"{rp}/{f}", content=content)
        b.check("absent", "local", f"{lp}/{f}")
        desc = (f"Move `{f}` from your local copy of project `{proj}` to the project's folder on the team "
                "server: upload it, then delete the local copy.")
    elif kind == "pack_upload_extract":
        d = p["folder"] = b.name(_FOLDERS)
        entries = b.folder("local", f"{lp}/{d}")
        b.check("archive", "remote", f"{arch_remote}/{archive_name(setup, d)}", format=setup["format"],
                entries=entries)
        for e, text in entries.items():
            if text is not None:
                b.check("file", "remote", f"{rp}/{e}", content=text)
        desc = (f"Ship the `{d}` folder of your local copy of project `{proj}` to the team server as an archive "
                "that follows the site's convention (it goes into the server's archive folder), then unpack it "
                "inside the project's folder on the server.")
    elif kind == "download_rename":
        f = p["file"] = b.name(_FILES)
        g = p["new"] = "server-" + f
        content = b.add("remote", f"{rp}/{f}")
        b.check("file", "local", f"{lp}/{g}", content=content)
        desc = (f"Download `{f}` from the team server's copy of project `{proj}` into your local copy of the "
                f"project, saving it as `{g}`.")
    elif kind == "backup_upload":
        f = p["file"] = b.name(_CONFIGS)
        g = p["new"] = f + ".old"
        old = b.add("remote", f"{rp}/{f}")
        new = b.add("local", f"{lp}/{f}", old.rstrip("\n") + " (updated)\n")
        b.check("file", "remote", f"{rp}/{g}", content=old)
        b.check("file", "remote", f"{rp}/{f}", content=new)
        desc = (f"Your local `{f}` in project `{proj}` is newer than the team server's copy. On the server, "
                f"first rename the project's current `{f}` to `{g}`, then upload your local `{f}` to the "
                "project's folder there.")
    return {"kind": kind, "description": desc, "params": p, "local_files": b.files["local"],
            "remote_files": b.files["remote"], "checks": b.checks}


# -- goal checks -----------------------------------------------------------------------------------
def _show(shell: Shell, side: str, path: str) -> str:
    m = shell.local if side == "local" else shell.remote
    parts = [c for c in path.split("/") if c]
    if side == "local":
        return m.tilde(parts)
    return f"{m.user}@{m.host}:{path}"


def evaluate(checks: list[dict[str, Any]], shell: Shell) -> list[tuple[bool, str]]:
    """Run every goal check on the machines' current state: ``(passed, line)`` per check.

    Check kinds: ``file`` (exists with exactly ``content``; ``note: "unchanged"`` for files that
    must be left alone), ``absent``, ``dir``, ``mode`` (octal string) and ``archive`` (a file of
    ``format`` holding exactly ``entries``).
    """
    out = []
    for c in checks:
        side = c["machine"]
        fs = shell.local.fs if side == "local" else shell.remote.fs
        node = fs.get([p for p in c["path"].split("/") if p])
        where = _show(shell, side, c["path"])
        kind = c["kind"]
        if kind == "file":
            ok = isinstance(node, File) and node.archive is None and node.content == c["content"]
            what = "is left unchanged" if c.get("note") == "unchanged" else "exists with the expected content"
            why = "" if ok else (" (missing)" if node is None else " (it is a folder)" if isinstance(node, Dir)
                                 else " (its content differs)")
            out.append((ok, f"{where} {what}{why}"))
        elif kind == "absent":
            ok = node is None
            out.append((ok, f"{where} is gone" + ("" if ok else " (it still exists)")))
        elif kind == "dir":
            ok = isinstance(node, Dir)
            why = "" if ok else " (missing)" if node is None else " (not a folder)"
            out.append((ok, f"{where} is a folder{why}"))
        elif kind == "mode":
            ok = node is not None and node.mode == int(c["mode"], 8)
            why = "" if ok else (" (missing)" if node is None else f" (now {node.mode:03o})")
            out.append((ok, f"{where} has mode {c['mode']} ({MODES.get(c['mode'], '')}){why}"))
        elif kind == "archive":
            arch = getattr(node, "archive", None)
            ok = arch is not None and arch["format"] == c["format"] and arch["entries"] == c["entries"]
            if ok:
                why = ""
            elif node is None:
                why = " (missing)"
            elif arch is None:
                why = " (not an archive)"
            elif arch["format"] != c["format"]:
                why = f" (it is a {arch['format']} archive)"
            else:
                missing = [e for e in c["entries"] if e not in arch["entries"]]
                why = f" (entries differ; missing: {', '.join(missing[:5]) or 'none'})"
            n = len(c["entries"])
            folder = next(iter(c["entries"])).split("/")[0]
            out.append((ok, f"{where} is a {c['format']} archive of the folder {folder} ({n} entries){why}"))
        else:  # pragma: no cover - specs are built by sample_task
            out.append((False, f"unknown check {kind!r}"))
    return out


def entries_of(shell: Shell, side: str, path: str) -> dict[str, str | None]:
    """Archive entries that packing the folder at ``path`` now would give (for tests)."""
    fs = shell.local.fs if side == "local" else shell.remote.fs
    node = fs.get([p for p in path.split("/") if p])
    assert node is not None
    return walk_entries(path.rsplit("/", 1)[-1], node)
