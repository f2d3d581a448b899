"""The simulated shell of the Terminal environment: command-line parsing and execution.

A :class:`Shell` joins two :class:`Machine` objects: the *local* machine (flavour ``linux``,
``macos`` or ``windows``) and the *server* (flavour ``server``, a Linux box reached with
``ssh user@host``). It runs one command line at a time and answers with shell-like text.

Command lines: words separated by blanks; single and double quotes group words; ``&&`` runs the
next command only when the previous one succeeded and ``;`` runs it anyway. Pipes, redirects,
background jobs, variables, command substitution and wildcards are refused with a message saying
so (nothing runs). Every command works on the in-memory :mod:`~codrl.envs.terminal.fs` trees:
nothing real is read, written or executed.

Commands (local Linux/macOS and the server): ``cd ls pwd cat mkdir cp mv rm chmod tar zip unzip
ssh scp exit echo help done`` (``logout`` on the server). The Windows flavour (a PowerShell-like
subset) has ``cd ls dir pwd cat type mkdir cp copy mv move rm del ren zip unzip ssh scp exit echo
help done`` and lacks ``chmod`` and ``tar``. ``rsync`` exists nowhere.

Simplifications and quirks of this simulator (the environment's "site setup" shares them with
every task of a pack, and they are what an agent learns once and reuses):

* ``ls`` marks folders with a trailing ``/``; ``ls -l`` shows permission bits.
* ``scp`` runs only on the local machine; it needs ``-r`` for folders and an existing destination
  folder (it never creates missing parent folders); ``user@host:path`` paths are relative to the
  server user's home folder.
* ``chmod`` accepts 3-digit octal modes only (``755``; not ``u+x``); no options.
* ``tar`` and ``zip`` pack exactly one folder, stored under the folder's own name whatever path
  names it; the archive must be named after that folder (``data.tar.gz``, ``data.tar``,
  ``data.zip``); ``tar`` needs ``-z`` exactly when the name ends in ``.tar.gz``/``.tgz``. ``zip``
  without ``-r`` stores only the empty folder. ``tar -x`` and ``unzip`` extract into the current
  folder unless ``-C DIR`` / ``-d DIR`` say otherwise.
* ``ssh`` only opens an interactive session (no remote command in one go, no options); ``exit``
  (or ``logout``) closes it. Paths are case-sensitive on every machine.
* On Windows, ``\\`` and ``/`` both separate folders, ``C:`` is the only drive and ``mkdir``
  creates missing parent folders by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from codrl.envs.terminal.fs import (ERROR_KINDS, Dir, File, FileSystem, FsError, Node, clone, count,
                                    mode_string, walk_entries)

FLAVOURS = ("linux", "macos", "windows")

#: Longest command line the shell reads, and most commands chained on one line.
MAX_LINE = 1000
MAX_CHAIN = 16

POSIX_COMMANDS = ("cd", "ls", "pwd", "cat", "mkdir", "cp", "mv", "rm", "chmod", "tar", "zip", "unzip",
                  "ssh", "scp", "exit", "echo", "help", "done")
SERVER_COMMANDS = POSIX_COMMANDS + ("logout",)
WINDOWS_COMMANDS = ("cd", "ls", "dir", "pwd", "cat", "type", "mkdir", "cp", "copy", "mv", "move", "rm",
                    "del", "ren", "zip", "unzip", "ssh", "scp", "exit", "echo", "help", "done")
#: Windows aliases -> the command that implements them.
ALIASES = {"dir": "ls", "type": "cat", "copy": "cp", "move": "mv", "del": "rm"}
#: PowerShell cmdlet names used in Windows error messages.
CMDLETS = {"ls": "Get-ChildItem", "cd": "Set-Location", "cat": "Get-Content", "mkdir": "New-Item",
           "cp": "Copy-Item", "mv": "Move-Item", "rm": "Remove-Item", "ren": "Rename-Item"}
_POSIX_VERB = {"ls": "cannot access", "mkdir": "cannot create directory", "cp": "cannot stat",
               "mv": "cannot stat", "rm": "cannot remove", "chmod": "cannot access"}
_WIN_LONG = {"-recurse": "r", "-force": "f"}
_REMOTE_RE = re.compile(r"(?:([^@:/\\\s]+)@)?([A-Za-z0-9][A-Za-z0-9._-]+):(.*)", re.DOTALL)
_DRIVE_RE = re.compile(r"([A-Za-z]):")
_MODE_RE = re.compile(r"[0-7]{3}")
_OLD_TAR_RE = re.compile(r"[ctxzvfC]+")


@dataclass
class Machine:
    """One computer: its shell flavour, login, file system and current folder."""

    flavour: str
    user: str
    host: str
    fs: FileSystem
    cwd: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cwd:
            self.cwd = list(self.fs.home_parts)

    @property
    def windows(self) -> bool:
        return self.flavour == "windows"

    def commands(self) -> tuple[str, ...]:
        return {"windows": WINDOWS_COMMANDS, "server": SERVER_COMMANDS}.get(self.flavour, POSIX_COMMANDS)

    def parts(self, path: str) -> list[str]:
        """Components of ``path`` typed on this machine (Windows: ``\\`` and ``C:`` understood)."""
        if self.windows:
            path = path.replace("\\", "/")
            m = _DRIVE_RE.match(path)
            if m:
                if m.group(1).upper() != "C":
                    raise FsError("drive", m.group(1).upper())
                path = "/" + path[2:].lstrip("/")
        return self.fs.parts(path, self.cwd)

    def show(self, parts: list[str]) -> str:
        """An absolute path as this machine writes it."""
        if self.windows:
            return "C:\\" + "\\".join(parts)
        return "/" + "/".join(parts)

    def tilde(self, parts: list[str]) -> str:
        """A path with the home folder written ``~`` (as prompts and goal lines show it)."""
        home = self.fs.home_parts
        if parts[:len(home)] == home:
            rest = parts[len(home):]
            sep = "\\" if self.windows else "/"
            return "~" + "".join(sep + p for p in rest)
        return self.show(parts)

    def prompt(self) -> str:
        if self.windows:
            return f"PS {self.show(self.cwd)}>"
        if self.flavour == "macos":
            here = self.tilde(self.cwd)
            base = here if here == "~" or not self.cwd else self.cwd[-1]
            return f"{self.user}@{self.host} {base} %"
        return f"{self.user}@{self.host}:{self.tilde(self.cwd)}$"


@dataclass
class RunResult:
    """Outcome of one command line: shell output, exit status of the last command, ``done`` asked."""

    output: str
    ok: bool
    done: bool = False
    commands: int = 0


class ShellError(Exception):
    """A command failed; the message is the shell's error text."""


# -- command-line parsing ------------------------------------------------------------------------
def split_line(line: str) -> tuple[list[tuple[str, list[str]]], str | None]:
    """Split a command line into ``(separator, words)`` segments, or return an error text.

    The separator of the first segment is ``""``; later ones are ``"&&"`` or ``";"``. Runs in
    linear time; refuses pipes, redirects, ``&``, ``$``, backticks and wildcards outside quotes.
    """
    if len(line) > MAX_LINE:
        return [], f"command line too long (at most {MAX_LINE} characters)"
    segs: list[tuple[str, list[str]]] = []
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    sep = ""
    i, n = 0, len(line)

    def end_segment(next_sep: str) -> str | None:
        nonlocal words, sep
        if not words:
            return f"syntax error near unexpected token `{next_sep}'"
        segs.append((sep, words))
        words, sep = [], next_sep
        if len(segs) >= MAX_CHAIN:
            return f"too many commands on one line (at most {MAX_CHAIN - 1} chained)"
        return None

    while i < n:
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            elif quote == '"' and (c == "`" or c == "$"):
                return [], _special_error(c, line[i + 1:i + 2])
            else:
                cur.append(c)
            i += 1
            continue
        if c == "'" or c == '"':
            quote, in_word = c, True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        elif c in "&;":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            if c == "&" and line[i + 1:i + 2] != "&":
                return [], "running commands in the background (&) is not supported here"
            err = end_segment("&&" if c == "&" else ";")
            if err:
                return [], err
            if c == "&":
                i += 1
        elif c in "|<>`$*?":
            return [], _special_error(c, line[i + 1:i + 2])
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        return [], "syntax error: unterminated quote"
    if in_word:
        words.append("".join(cur))
    if words:
        segs.append((sep, words))
    elif sep == "&&":
        return [], "syntax error: unexpected end of line after `&&'"
    return segs, None


def _special_error(c: str, nxt: str) -> str:
    if c == "|":
        return "pipes (|) are not supported here; run one command per turn (chain with && or ;)"
    if c in "<>":
        return "redirection (> or <) is not supported here; change files with the commands listed by help"
    if c == "`" or (c == "$" and nxt == "("):
        return "command substitution ($(...) or backticks) is not supported here"
    if c == "$":
        return "variables ($NAME) are not supported here; use ~ for your home folder"
    return "wildcards (* and ?) are not supported here; name each file or folder"


# -- the shell -------------------------------------------------------------------------------------
class Shell:
    """A terminal on ``local`` that can log in to ``remote``. See the module docstring."""

    def __init__(self, local: Machine, remote: Machine) -> None:
        self.local = local
        self.remote = remote
        self.on_remote = False
        self.done = False

    @property
    def m(self) -> Machine:
        """The machine commands run on now."""
        return self.remote if self.on_remote else self.local

    def prompt(self) -> str:
        return self.m.prompt()

    # -- running ------------------------------------------------------------------------------
    def run(self, line: str) -> RunResult:
        """Run one command line; never raises."""
        segs, err = split_line(line)
        if err is not None:
            return RunResult(self._shell_prefix() + err, False)
        if not segs:
            return RunResult("", True)
        out: list[str] = []
        ok = True
        ran = 0
        for sep, words in segs:
            if sep == "&&" and not ok:
                continue
            text, ok = self._run_one(words)
            ran += 1
            if text:
                out.append(text)
            if self.done:
                break
        return RunResult("\n".join(out), ok, self.done, ran)

    def _shell_prefix(self) -> str:
        return {"windows": "ParserError: ", "macos": "zsh: "}.get(self.m.flavour, "bash: ")

    def _run_one(self, words: list[str]) -> tuple[str, bool]:
        m = self.m
        name = words[0].lower() if m.windows else words[0]
        args = words[1:]
        if name not in m.commands():
            return self._not_found(words[0]), False
        cmd = ALIASES.get(name, name)
        try:
            text = getattr(self, f"_cmd_{cmd}")(cmd, args)
            return text, True
        except ShellError as e:
            return str(e), False
        except FsError as e:  # an error a command did not word itself
            return self._fs_message(cmd, e, e.path), False

    def _not_found(self, word: str) -> str:
        word = word[:80]
        flavour = self.m.flavour
        if flavour == "windows":
            text = (f"{word}: The term '{word}' is not recognized as a name of a cmdlet, function, "
                    "script file, or executable program.")
        elif flavour == "macos":
            text = f"zsh: command not found: {word}"
        else:
            text = f"bash: {word}: command not found"
        return text + "\nType help to list the commands available here."

    # -- messages -----------------------------------------------------------------------------
    def _fs_message(self, cmd: str, e: FsError, arg: str) -> str:
        """The error text of ``cmd`` for ``e`` about the path ``arg`` as typed."""
        m = self.m
        arg = arg[:200]
        if e.kind == "drive":
            if m.windows:
                return (f"{CMDLETS.get(cmd, cmd)}: Cannot find drive. A drive with the name '{e.path}' "
                        "does not exist.")
            return f"{cmd}: {arg}: No such file or directory"
        if m.windows and cmd in CMDLETS:
            try:
                full = m.show(m.parts(arg))
            except FsError:
                full = arg
            text = {
                "noent": f"Cannot find path '{full}' because it does not exist.",
                "notdir": f"The path '{full}' is not a folder.",
                "isdir": f"The path '{full}' is a folder.",
                "exists": f"An item with the specified name {full} already exists.",
                "notempty": f"The folder '{full}' is not empty.",
                "full": "There is not enough space on the disk.",
                "toolong": "The specified path, file name, or both are too long.",
            }.get(e.kind, e.kind)
            return f"{CMDLETS[cmd]}: {text}"
        reason = ERROR_KINDS.get(e.kind, e.kind)
        if cmd == "cd":
            if m.flavour == "macos":
                return f"cd: {reason.lower()}: {arg}"
            return f"bash: cd: {arg}: {reason}"
        verb = _POSIX_VERB.get(cmd)
        if verb:
            return f"{cmd}: {verb} '{arg}': {reason}"
        return f"{cmd}: {arg}: {reason}"

    def _fail(self, cmd: str, kind: str, arg: str) -> ShellError:
        return ShellError(self._fs_message(cmd, FsError(kind, arg), arg))

    def _resolve(self, cmd: str, arg: str, m: Machine | None = None) -> list[str]:
        m = m or self.m
        try:
            return m.parts(arg)
        except FsError as e:
            raise ShellError(self._fs_message(cmd, e, arg)) from None

    def _options(self, cmd: str, args: list[str], allowed: str) -> tuple[set[str], list[str]]:
        """Split ``args`` into option letters (from ``allowed``) and operands."""
        flags: set[str] = set()
        pos: list[str] = []
        only_pos = False
        for a in args:
            if only_pos or not a.startswith("-") or a == "-":
                pos.append(a)
                continue
            if a == "--":
                only_pos = True
                continue
            if self.m.windows and a.lower() in _WIN_LONG and _WIN_LONG[a.lower()] in allowed:
                flags.add(_WIN_LONG[a.lower()])
                continue
            bad = next((ch for ch in a[1:] if ch not in allowed), None) if not a.startswith("--") else a
            if bad is not None:
                if self.m.windows and cmd in CMDLETS:
                    raise ShellError(f"{CMDLETS[cmd]}: A parameter cannot be found that matches parameter "
                                     f"name '{a[1:40]}'.")
                supported = ", ".join("-" + ch for ch in allowed if ch.islower()) or "none"
                what = f"unrecognized option '{a[:40]}'" if a.startswith("--") else f"invalid option -- '{bad}'"
                raise ShellError(f"{cmd}: {what}\n(options supported here: {supported})")
            flags.update(a[1:])
        return flags, pos

    # -- navigation and reading ---------------------------------------------------------------
    def _cmd_pwd(self, cmd: str, args: list[str]) -> str:
        return self.m.show(self.m.cwd)

    def _cmd_cd(self, cmd: str, args: list[str]) -> str:
        m = self.m
        if len(args) > 1:
            if m.windows:
                raise ShellError(f"Set-Location: A positional parameter cannot be found that accepts "
                                 f"argument '{args[1][:40]}'.")
            raise ShellError("bash: cd: too many arguments" if m.flavour != "macos" else
                             f"cd: string not in pwd: {args[0][:40]}")
        target = args[0] if args else "~"
        parts = self._resolve(cmd, target)
        node = m.fs.get(parts)
        if node is None:
            raise self._fail(cmd, "noent", target)
        if not isinstance(node, Dir):
            raise self._fail(cmd, "notdir", target)
        m.cwd = parts
        return ""

    def _cmd_echo(self, cmd: str, args: list[str]) -> str:
        return " ".join(args)

    def _cmd_help(self, cmd: str, args: list[str]) -> str:
        m = self.m
        where = {"windows": "this Windows machine (PowerShell)", "macos": "this Mac (zsh)",
                 "linux": "this Linux machine (bash)"}.get(m.flavour, f"the server {m.host} (bash)")
        lines = [f"Commands on {where}: {' '.join(m.commands())}"]
        if m.windows:
            lines.append("dir=ls, type=cat, copy=cp, move=mv, del=rm; ren PATH NEWNAME renames. "
                         "Folders: -r (or -Recurse).")
        lines.append("Chain commands with && or ;. Pipes, redirects, wildcards and variables are not "
                     "supported.")
        return "\n".join(lines)

    def _cmd_done(self, cmd: str, args: list[str]) -> str:
        self.done = True
        return ""

    def _cmd_ls(self, cmd: str, args: list[str]) -> str:
        m = self.m
        flags, pos = self._options(cmd, args, "la1")
        if not pos:
            pos = ["."]
        out: list[str] = []
        errors: list[str] = []
        for arg in pos:
            parts = self._resolve(cmd, arg)
            node = m.fs.get(parts)
            if node is None:
                errors.append(self._fs_message(cmd, FsError("noent", arg), arg))
                continue
            if m.windows:
                out.append(self._win_listing(parts, node))
                continue
            if isinstance(node, File):
                out.append(self._ls_line(arg, node) if "l" in flags else arg)
                continue
            names = sorted((k for k in node.children if "a" in flags or not k.startswith(".")), key=str.lower)
            if "l" in flags:
                body = "\n".join(self._ls_line(k, node.children[k]) for k in names)
                body = f"total {len(names)}" + ("\n" + body if body else "")
            else:
                body = "  ".join(k + ("/" if isinstance(node.children[k], Dir) else "") for k in names)
            out.append(f"{arg}:\n{body}" if len(pos) > 1 else body)
        if errors:
            text = "\n".join(errors + out)
            raise ShellError(text)
        return "\n\n".join(x for x in out if x) if len(pos) > 1 else (out[0] if out else "")

    def _ls_line(self, name: str, node: Node) -> str:
        size = 4096 if isinstance(node, Dir) else node.size()
        suffix = "/" if isinstance(node, Dir) else ""
        return f"{mode_string(node)} {self.m.user:<8} {size:>6} {name}{suffix}"

    def _win_listing(self, parts: list[str], node: Node) -> str:
        m = self.m
        items = [(parts[-1] if parts else "", node)] if isinstance(node, File) else \
            sorted(node.children.items(), key=lambda kv: kv[0].lower())
        where = m.show(parts[:-1] if isinstance(node, File) else parts)
        lines = [f"    Directory: {where}", "", "Mode          Length Name", "----          ------ ----"]
        for name, child in items:
            if isinstance(child, Dir):
                lines.append(f"d----                {name}")
            else:
                lines.append(f"-a---    {child.size():>10} {name}")
        return "\n".join(lines) if items else f"    Directory: {where}\n\n(empty folder)"

    def _cmd_cat(self, cmd: str, args: list[str]) -> str:
        m = self.m
        if not args:
            raise ShellError(f"{cmd}: missing file operand" if not m.windows else
                             "Get-Content: Cannot bind argument to parameter 'Path' because it is null.")
        out, errors = [], []
        for arg in args:
            node = m.fs.get(self._resolve(cmd, arg))
            if node is None:
                errors.append(self._fs_message(cmd, FsError("noent", arg), arg))
            elif isinstance(node, Dir):
                errors.append(self._fs_message(cmd, FsError("isdir", arg), arg))
            elif node.archive is not None:
                n = len(node.archive["entries"])
                lister = "tar -tf" if node.archive["format"] != "zip" else "unzip -l"
                out.append(f"{cmd}: {arg}: binary file ({node.archive['format']} archive with {n} entries; "
                           f"list them with {lister})")
            else:
                out.append(node.content.rstrip("\n"))
        if errors:
            raise ShellError("\n".join(out + errors))
        return "\n".join(out)

    # -- changing files -----------------------------------------------------------------------
    def _cmd_mkdir(self, cmd: str, args: list[str]) -> str:
        m = self.m
        flags, pos = self._options(cmd, args, "pv")
        parents = "p" in flags or m.windows
        if not pos:
            raise ShellError("mkdir: missing operand")
        errors = []
        for arg in pos:
            parts = self._resolve(cmd, arg)
            if not parts:
                errors.append(self._fs_message(cmd, FsError("exists", arg), arg))
                continue
            existing = m.fs.get(parts)
            if existing is not None:
                if isinstance(existing, Dir) and "p" in flags:
                    continue
                errors.append(self._fs_message(cmd, FsError("exists", arg), arg))
                continue
            try:
                m.fs.mkdirs(parts, parents=parents)
            except FsError as e:
                errors.append(self._fs_message(cmd, e, arg))
        if errors:
            raise ShellError("\n".join(errors))
        return ""

    def _copy_target(self, cmd: str, m: Machine, dst: str, dparts: list[str], nsrc: int) -> tuple[Node | None, bool]:
        """(node at the destination, whether sources go *into* it)."""
        dnode = m.fs.get(dparts)
        if nsrc > 1 and not isinstance(dnode, Dir):
            if m.windows and cmd in CMDLETS:
                raise self._fail(cmd, "notdir", dst)
            raise ShellError(f"{cmd}: target '{dst[:200]}' is not a directory")
        return dnode, isinstance(dnode, Dir)

    def _cmd_cp(self, cmd: str, args: list[str]) -> str:
        m = self.m
        flags, pos = self._options(cmd, args, "rRfv")
        recursive = bool(flags & {"r", "R"})
        if len(pos) < 2:
            raise ShellError(f"{cmd}: missing destination file operand" if pos else f"{cmd}: missing file operand")
        srcs, dst = pos[:-1], pos[-1]
        dparts = self._resolve(cmd, dst)
        _, into = self._copy_target(cmd, m, dst, dparts, len(srcs))
        errors = []
        for src in srcs:
            try:
                self._copy_one(cmd, m, src, m, dst, dparts, into, recursive)
            except ShellError as e:
                errors.append(str(e))
        if errors:
            raise ShellError("\n".join(errors))
        return ""

    def _copy_one(self, cmd: str, sm: Machine, src: str, dm: Machine, dst: str, dparts: list[str],
                  into: bool, recursive: bool, need_dir: bool = False) -> Node:
        """Copy ``src`` on ``sm`` to ``dst`` on ``dm`` (cp and scp); return the copied node.

        ``need_dir``: the destination was written with a trailing slash, so it must be a folder.
        """
        sparts = self._resolve(cmd, src, sm)
        snode = sm.fs.get(sparts)
        if snode is None:
            if cmd == "scp":
                raise ShellError(f"scp: {src[:200]}: No such file or directory")
            raise self._fail(cmd, "noent", src)
        if isinstance(snode, Dir) and not recursive:
            if cmd == "scp":
                raise ShellError(f"scp: {src[:200]}: not a regular file")
            if sm.windows:
                raise ShellError(f"Copy-Item: '{sm.show(sparts)}' is a folder; add -r (-Recurse) to copy a "
                                 "folder with its contents.")
            raise ShellError(f"cp: -r not specified; omitting directory '{src[:200]}'")
        if not sparts:
            raise ShellError(f"{cmd}: cannot copy the root folder")
        if need_dir and not into:
            raise ShellError(f"{cmd}: {dst[:200]}: No such file or directory")
        target = dparts + [sparts[-1]] if into else dparts
        if sm is dm:
            if target == sparts:
                raise ShellError(f"{cmd}: '{src[:200]}' and '{dst[:200]}' are the same file")
            if isinstance(snode, Dir) and target[:len(sparts)] == sparts:
                raise ShellError(f"{cmd}: cannot copy a directory, '{src[:200]}', into itself, '{dst[:200]}'")
        existing = dm.fs.get(target)
        if isinstance(existing, Dir) and isinstance(snode, File):
            raise ShellError(f"{cmd}: cannot overwrite directory '{dst[:200]}' with non-directory")
        if isinstance(existing, File) and isinstance(snode, Dir):
            raise ShellError(f"{cmd}: cannot overwrite non-directory '{dst[:200]}' with directory '{src[:200]}'")
        if not isinstance(dm.fs.get(target[:-1]), Dir):
            if cmd == "scp":
                raise ShellError(f"scp: {dst[:200]}: No such file or directory")
            if dm.windows:
                raise self._fail(cmd, "noent", dst)
            what = "directory" if isinstance(snode, Dir) else "regular file"
            raise ShellError(f"{cmd}: cannot create {what} '{dst[:200]}': No such file or directory")
        try:
            dm.fs.make_room(count(snode))
        except FsError as e:
            raise ShellError(f"{cmd}: {dst[:200]}: {ERROR_KINDS[e.kind]}") from None
        new = clone(snode)
        if isinstance(existing, Dir) and isinstance(new, Dir):
            _merge(existing, new)
        else:
            dm.fs.attach(target, new)
        return new

    def _cmd_mv(self, cmd: str, args: list[str]) -> str:
        m = self.m
        _, pos = self._options(cmd, args, "fv")
        if len(pos) < 2:
            raise ShellError(f"{cmd}: missing destination file operand" if pos else f"{cmd}: missing file operand")
        srcs, dst = pos[:-1], pos[-1]
        dparts = self._resolve(cmd, dst)
        _, into = self._copy_target(cmd, m, dst, dparts, len(srcs))
        errors = []
        for src in srcs:
            try:
                sparts = self._resolve(cmd, src)
                self._move(cmd, src, sparts, dst, dparts + [sparts[-1]] if into and sparts else dparts)
            except ShellError as e:
                errors.append(str(e))
        if errors:
            raise ShellError("\n".join(errors))
        return ""

    def _move(self, cmd: str, src: str, sparts: list[str], dst: str, target: list[str]) -> None:
        m = self.m
        snode = m.fs.get(sparts)
        if snode is None:
            raise self._fail(cmd, "noent", src)
        if not sparts:
            raise ShellError(f"{cmd}: cannot move the root folder")
        if target == sparts:
            raise ShellError(f"{cmd}: '{src[:200]}' and '{dst[:200]}' are the same file")
        if isinstance(snode, Dir) and target[:len(sparts)] == sparts:
            raise ShellError(f"{cmd}: cannot move '{src[:200]}' to a subdirectory of itself, '{dst[:200]}'")
        if m.cwd[:len(sparts)] == sparts and m.windows:
            raise ShellError(f"{CMDLETS.get(cmd, cmd)}: The process cannot access '{m.show(sparts)}' because it "
                             "is being used by another process.")
        existing = m.fs.get(target)
        if isinstance(existing, Dir):
            if isinstance(snode, File):
                raise ShellError(f"{cmd}: cannot overwrite directory '{dst[:200]}' with non-directory")
            if existing.children:
                raise ShellError(f"{cmd}: cannot move '{src[:200]}' to '{dst[:200]}': Directory not empty")
        if isinstance(existing, File) and isinstance(snode, Dir):
            raise ShellError(f"{cmd}: cannot overwrite non-directory '{dst[:200]}' with directory '{src[:200]}'")
        if not isinstance(m.fs.get(target[:-1]), Dir):
            if m.windows and cmd in CMDLETS:
                raise self._fail(cmd, "noent", dst)
            raise ShellError(f"{cmd}: cannot move '{src[:200]}' to '{dst[:200]}': No such file or directory")
        m.fs.detach(sparts)
        m.fs.attach(target, snode)

    def _cmd_ren(self, cmd: str, args: list[str]) -> str:
        m = self.m
        _, pos = self._options(cmd, args, "f")
        if len(pos) != 2:
            raise ShellError("Rename-Item: usage: ren PATH NEWNAME")
        src, new = pos
        if "/" in new or "\\" in new or new in (".", ".."):
            raise ShellError("Rename-Item: Cannot rename the specified target, because it represents a path or "
                             "device name. Give the new name only (ren PATH NEWNAME).")
        sparts = self._resolve("ren", src)
        if m.fs.get(sparts) is None or not sparts:
            raise self._fail("ren", "noent", src)
        target = sparts[:-1] + [new]
        if m.fs.get(target) is not None and target != sparts:
            raise self._fail("ren", "exists", new)
        self._move("ren", src, sparts, new, target)
        return ""

    def _cmd_rm(self, cmd: str, args: list[str]) -> str:
        m = self.m
        flags, pos = self._options(cmd, args, "rRfv")
        recursive = bool(flags & {"r", "R"})
        if not pos:
            raise ShellError("rm: missing operand" if not m.windows else
                             "Remove-Item: Cannot bind argument to parameter 'Path' because it is null.")
        errors = []
        for arg in pos:
            last = (arg.replace("\\", "/") if m.windows else arg).rstrip("/").rsplit("/", 1)[-1]
            if last in (".", ".."):
                errors.append(f"rm: refusing to remove '.' or '..' directory: skipping '{arg[:200]}'")
                continue
            parts = self._resolve(cmd, arg)
            node = m.fs.get(parts)
            if node is None:
                if "f" not in flags:
                    errors.append(self._fs_message(cmd, FsError("noent", arg), arg))
                continue
            if not parts:
                errors.append("rm: it is dangerous to operate recursively on '/'\n"
                              "rm: use --no-preserve-root to override this failsafe")
                continue
            if isinstance(node, Dir) and not recursive:
                if m.windows and not node.children:
                    pass
                elif m.windows:
                    errors.append(f"Remove-Item: The item at {m.show(parts)} has children and the -Recurse "
                                  "parameter was not specified (add -r).")
                    continue
                else:
                    errors.append(self._fs_message(cmd, FsError("isdir", arg), arg))
                    continue
            m.fs.detach(parts)
        if errors:
            raise ShellError("\n".join(errors))
        return ""

    def _cmd_chmod(self, cmd: str, args: list[str]) -> str:
        m = self.m
        if args and args[0].startswith("-"):
            raise ShellError(f"chmod: option {args[0][:40]} is not supported here (usage: chmod 755 FILE)")
        if len(args) < 2:
            raise ShellError("chmod: missing operand" + (f" after '{args[0][:40]}'" if args else ""))
        mode, paths = args[0], args[1:]
        if not _MODE_RE.fullmatch(mode):
            raise ShellError(f"chmod: invalid mode: '{mode[:40]}'\nThis system's chmod accepts 3-digit octal "
                             "modes only, such as 755 (rwxr-xr-x) or 640 (rw-r-----).")
        errors = []
        for arg in paths:
            node = m.fs.get(self._resolve(cmd, arg))
            if node is None:
                errors.append(self._fs_message(cmd, FsError("noent", arg), arg))
            else:
                node.mode = int(mode, 8)
        if errors:
            raise ShellError("\n".join(errors))
        return ""

    # -- archives -----------------------------------------------------------------------------
    def _packed_folder(self, cmd: str, srcs: list[str], base: list[str]) -> tuple[str, Dir]:
        """The one folder an archive packs: (its name, node)."""
        m = self.m
        if len(srcs) > 1:
            raise ShellError(f"{cmd}: this system packs exactly one folder per archive (got {len(srcs)} paths)")
        src = srcs[0]
        try:
            sparts = m.parts(src) if base is m.cwd else m.fs.parts(src.replace("\\", "/") if m.windows else src, base)
        except FsError as e:
            raise ShellError(self._fs_message(cmd, e, src)) from None
        node = m.fs.get(sparts)
        if node is None:
            if cmd == "tar":
                raise ShellError(f"tar: {src[:200]}: Cannot stat: No such file or directory\n"
                                 "tar: Exiting with failure status due to previous errors")
            raise ShellError(f"zip warning: name not matched: {src[:200]}\n\nzip error: Nothing to do!")
        if isinstance(node, File):
            raise ShellError(f"{cmd}: this system packs folders only, and '{src[:200]}' is a file")
        if not sparts:
            raise ShellError(f"{cmd}: cannot pack the root folder")
        return sparts[-1], node

    def _write_archive(self, cmd: str, name: str, fmt: str, entries: dict[str, str | None]) -> None:
        m = self.m
        aparts = self._resolve(cmd, name)
        existing = m.fs.get(aparts)
        if isinstance(existing, Dir) or not aparts:
            raise ShellError(f"{cmd}: {name[:200]}: Cannot open: Is a directory")
        if not isinstance(m.fs.get(aparts[:-1]), Dir):
            raise ShellError(f"{cmd}: {name[:200]}: Cannot open: No such file or directory")
        try:
            m.fs.make_room(len(entries) + 1)
        except FsError:
            raise ShellError(f"{cmd}: {name[:200]}: No space left on device") from None
        m.fs.attach(aparts, File("", 0o644, {"format": fmt, "entries": entries}))

    def _extract(self, cmd: str, entries: dict[str, str | None], target: list[str]) -> None:
        m = self.m
        try:
            m.fs.make_room(len(entries))
            for name, content in entries.items():
                comps = [c for c in name.split("/") if c]
                if content is None:
                    m.fs.mkdirs(target + comps, room_checked=True)
                else:
                    m.fs.mkdirs(target + comps[:-1], room_checked=True)
                    if isinstance(m.fs.get(target + comps), Dir):
                        raise FsError("isdir", name)
                    m.fs.attach(target + comps, File(content))
        except FsError as e:
            raise ShellError(f"{cmd}: cannot extract here: {ERROR_KINDS.get(e.kind, e.kind)}") from None

    def _cmd_tar(self, cmd: str, args: list[str]) -> str:
        m = self.m
        args = list(args)
        if args and _OLD_TAR_RE.fullmatch(args[0]):
            args[0] = "-" + args[0]
        mode, z, verbose, fname, cdir = "", False, False, None, None
        pos: list[str] = []
        i = 0
        longs = {"--create": "c", "--extract": "x", "--get": "x", "--list": "t", "--gzip": "z",
                 "--gunzip": "z", "--verbose": "v"}
        while i < len(args):
            a = args[i]
            letters: list[tuple[str, str | None]] = []
            if a.startswith("--"):
                key, eq, val = a.partition("=")
                if key in longs:
                    letters.append((longs[key], None))
                elif key in ("--file", "--directory"):
                    if not eq:
                        if i + 1 >= len(args):
                            raise ShellError(f"tar: option '{key}' requires an argument")
                        i += 1
                        val = args[i]
                    letters.append(("f" if key == "--file" else "C", val))
                else:
                    raise ShellError(f"tar: unrecognized option '{a[:40]}'\n(options supported here: -c -x -t "
                                     "-z -v -f NAME -C DIR)")
            elif a.startswith("-") and len(a) > 1:
                j = 1
                while j < len(a):
                    ch = a[j]
                    if ch in "fC":
                        val = a[j + 1:]
                        if not val:
                            if i + 1 >= len(args):
                                raise ShellError(f"tar: option requires an argument -- '{ch}'")
                            i += 1
                            val = args[i]
                        letters.append((ch, val))
                        break
                    letters.append((ch, None))
                    j += 1
            else:
                pos.append(a)
            for ch, val in letters:
                if ch in "cxt":
                    if mode and mode != ch:
                        raise ShellError("tar: You may not specify more than one of -c, -x, -t")
                    mode = ch
                elif ch == "z":
                    z = True
                elif ch == "v":
                    verbose = True
                elif ch == "f":
                    fname = val
                elif ch == "C":
                    cdir = val
                else:
                    raise ShellError(f"tar: invalid option -- '{ch}'\n(options supported here: -c -x -t -z -v "
                                     "-f NAME -C DIR)")
            i += 1
        if not mode:
            raise ShellError("tar: You must specify one of the -c, -x, -t options (create, extract, list)")
        if fname is None:
            raise ShellError("tar: no archive named: use -f NAME (for example tar -czf data.tar.gz data)")
        base = m.cwd
        if cdir is not None:
            base = self._resolve(cmd, cdir)
            if not m.fs.is_dir(base):
                raise ShellError(f"tar: {cdir[:200]}: Cannot open: No such file or directory")
        if mode == "c":
            if not pos:
                raise ShellError("tar: Cowardly refusing to create an empty archive")
            folder, node = self._packed_folder(cmd, pos, base)
            leaf = fname.replace("\\", "/").rsplit("/", 1)[-1]
            if leaf.endswith((".tar.gz", ".tgz")):
                ext = leaf[-7:] if leaf.endswith(".tar.gz") else ".tgz"
                if not z:
                    raise ShellError(f"tar: '{leaf[:200]}' names a gzip archive but -z is missing "
                                     "(use tar -czf NAME.tar.gz FOLDER)")
            elif leaf.endswith(".tar"):
                ext = ".tar"
                if z:
                    raise ShellError(f"tar: -z makes a gzip archive, so its name must end in .tar.gz, not "
                                     f"'{leaf[:200]}'")
            else:
                raise ShellError(f"tar: archive names here end in .tar or .tar.gz, not '{leaf[:200]}'")
            if leaf[:-len(ext)] != folder:
                raise ShellError(f"tar: an archive must be named after the folder it packs: expected "
                                 f"'{folder}{'.tar.gz' if z and ext != '.tgz' else ext}', not '{leaf[:200]}'")
            entries = walk_entries(folder, node)
            self._write_archive(cmd, fname, "tar.gz" if z else "tar", entries)
            return "\n".join(entries) if verbose else ""
        node = m.fs.get(self._resolve(cmd, fname))
        if node is None:
            raise ShellError(f"tar: {fname[:200]}: Cannot open: No such file or directory\n"
                             "tar: Error is not recoverable: exiting now")
        if isinstance(node, Dir):
            raise ShellError(f"tar: {fname[:200]}: Cannot read: Is a directory")
        if node.archive is None or node.archive["format"] not in ("tar", "tar.gz"):
            raise ShellError("tar: This does not look like a tar archive\n"
                             "tar: Exiting with failure status due to previous errors")
        entries = node.archive["entries"]
        if mode == "t":
            return "\n".join(entries)
        if pos:
            raise ShellError("tar: extracting selected members is not supported here; extract the whole archive")
        if not m.fs.is_dir(base):
            raise ShellError("tar: the current folder no longer exists")
        self._extract(cmd, entries, base)
        return "\n".join(entries) if verbose else ""

    def _cmd_zip(self, cmd: str, args: list[str]) -> str:
        flags, pos = self._options(cmd, args, "rq")
        if len(pos) < 2:
            raise ShellError("zip error: Nothing to do! (usage: zip -r NAME.zip FOLDER)")
        name = pos[0] if pos[0].endswith(".zip") else pos[0] + ".zip"
        folder, node = self._packed_folder(cmd, pos[1:], self.m.cwd)
        leaf = name.replace("\\", "/").rsplit("/", 1)[-1]
        if leaf[:-4] != folder:
            raise ShellError(f"zip: an archive must be named after the folder it packs: expected '{folder}.zip', "
                             f"not '{leaf[:200]}'")
        if "r" in flags:
            entries = walk_entries(folder, node)
            note = ""
        else:
            entries = {folder + "/": None}
            note = (f"\nzip note: {folder} is a folder; without -r only the empty folder was stored "
                    "(use zip -r to include its contents)")
        self._write_archive(cmd, name, "zip", entries)
        if "q" in flags:
            return note.strip()
        lines = [f"  adding: {e} ({'stored 0%' if v is None else 'deflated 31%'})" for e, v in entries.items()]
        return "\n".join(lines) + note

    def _cmd_unzip(self, cmd: str, args: list[str]) -> str:
        m = self.m
        args = list(args)
        target_arg = None
        if "-d" in args:
            k = args.index("-d")
            if k + 1 >= len(args):
                raise ShellError("unzip: option -d needs a folder (unzip NAME.zip -d FOLDER)")
            target_arg = args[k + 1]
            del args[k:k + 2]
        flags, pos = self._options(cmd, args, "loq")
        if len(pos) != 1:
            raise ShellError("unzip: usage: unzip NAME.zip [-d FOLDER]" if not pos else
                             "unzip: extracting selected members is not supported here; extract the whole archive")
        arg = pos[0]
        node = m.fs.get(self._resolve(cmd, arg))
        if node is None and not arg.endswith(".zip"):
            node = m.fs.get(self._resolve(cmd, arg + ".zip"))
        if node is None or isinstance(node, Dir):
            raise ShellError(f"unzip:  cannot find or open {arg[:200]}, {arg[:200]}.zip or {arg[:200]}.ZIP.")
        if node.archive is None or node.archive["format"] != "zip":
            raise ShellError(f"unzip: {arg[:200]} is not a zip archive (End-of-central-directory signature not "
                             "found)")
        entries = node.archive["entries"]
        if "l" in flags:
            return "\n".join([f"Archive:  {arg}"] + [f"  {e}" for e in entries])
        base = m.cwd
        if target_arg is not None:
            base = self._resolve(cmd, target_arg)
            try:
                m.fs.mkdirs(base)
            except FsError as e:
                raise ShellError(f"unzip: cannot create extraction directory {target_arg[:200]}: "
                                 f"{ERROR_KINDS.get(e.kind, e.kind)}") from None
        elif not m.fs.is_dir(base):
            raise ShellError("unzip: the current folder no longer exists")
        self._extract(cmd, entries, base)
        if "q" in flags:
            return ""
        return "\n".join([f"Archive:  {arg}"] + [f"   creating: {e}" if v is None else f"  inflating: {e}"
                                                for e, v in entries.items()])

    # -- the server ---------------------------------------------------------------------------
    def _login(self, cmd: str, user: str | None, host: str) -> None:
        r = self.remote
        if host != r.host:
            raise ShellError(f"ssh: Could not resolve hostname {host[:100]}: Name or service not known"
                             + ("\nscp: Connection closed" if cmd == "scp" else ""))
        if (user or self.local.user) != r.user:
            raise ShellError(f"{(user or self.local.user)[:100]}@{host}: Permission denied (publickey)."
                             + ("\nscp: Connection closed" if cmd == "scp" else ""))

    def _cmd_ssh(self, cmd: str, args: list[str]) -> str:
        if self.on_remote:
            raise ShellError(f"ssh: you are already logged in to {self.remote.host}; type exit to return to your "
                             "local machine first")
        if any(a.startswith("-") for a in args):
            raise ShellError("ssh: options are not supported here; use: ssh user@host")
        if not args:
            raise ShellError("usage: ssh user@host")
        if len(args) > 1:
            raise ShellError("ssh: running a command on the server in one go is not supported here; log in with "
                             "ssh user@host, then type commands there")
        user, at, host = args[0].rpartition("@")
        self._login(cmd, user if at else None, host)
        self.on_remote = True
        self.remote.cwd = list(self.remote.fs.home_parts)
        return f"Welcome to {self.remote.host} (Ubuntu 22.04 LTS)\nLast login: Mon Mar  4 09:12:44 2024"

    def _cmd_exit(self, cmd: str, args: list[str]) -> str:
        if self.on_remote:
            self.on_remote = False
            return f"logout\nConnection to {self.remote.host} closed."
        raise ShellError(f"{cmd}: you are on your local machine; there is no server session to leave "
                         "(answer done to end the task)")

    _cmd_logout = _cmd_exit

    def _cmd_scp(self, cmd: str, args: list[str]) -> str:
        if self.on_remote:
            raise ShellError("scp: run scp from your local machine (type exit to leave the server first)")
        flags, pos = self._options(cmd, args, "rpq")
        if len(pos) < 2:
            raise ShellError("usage: scp [-r] SOURCE... TARGET   (one side written user@host:path)")
        specs = [_REMOTE_RE.fullmatch(p) for p in pos]
        srcs, dst = list(zip(pos[:-1], specs[:-1], strict=True)), (pos[-1], specs[-1])
        src_remote = {s is not None for _, s in srcs}
        if len(src_remote) > 1:
            raise ShellError("scp: all sources must be on the same side")
        (upload,) = {not r for r in src_remote}
        if upload == (dst[1] is None):
            if upload:
                raise ShellError("scp: one side must be on the server, written user@host:path (for a local "
                                 "copy use cp)")
            raise ShellError("scp: copying between two server paths is not supported here")
        for _, spec in ([dst] if upload else srcs):
            assert spec is not None
            self._login(cmd, spec.group(1), spec.group(2))
        r, loc = self.remote, self.local
        home = list(r.fs.home_parts)
        saved = r.cwd
        r.cwd = home  # server paths are relative to the user's home folder
        try:
            if upload:
                dpath = dst[1].group(3) if dst[1] else ""
                dm, dshow = r, dpath
            else:
                dpath, dm, dshow = dst[0], loc, dst[0]
            dparts = self._resolve(cmd, dpath or "~", dm)
            dnode = dm.fs.get(dparts)
            need_dir = dpath.endswith(("/", "\\"))
            if len(srcs) > 1 and not isinstance(dnode, Dir):
                raise ShellError(f"scp: {dshow[:200]}: Not a directory")
            into = isinstance(dnode, Dir)
            out, errors = [], []
            for src, spec in srcs:
                sm, spath = (loc, src) if upload else (r, spec.group(3) if spec else "")
                try:
                    node = self._copy_one(cmd, sm, spath or "~", dm, dshow or "~", dparts, into, "r" in flags,
                                          need_dir)
                except ShellError as e:
                    errors.append(str(e))
                    continue
                for fname, fnode in _files(spath.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "~", node):
                    out.append(f"{fname:<28} 100% {fnode.size():>6}B   1.2MB/s   00:00")
        finally:
            r.cwd = saved
        if errors:
            raise ShellError("\n".join(out + errors))
        return "\n".join(out)


def _merge(dst: Dir, src: Dir) -> None:
    """Copy ``src``'s tree into the existing folder ``dst`` (files replace files)."""
    stack = [(dst, src)]
    while stack:
        d, s = stack.pop()
        for name, child in s.children.items():
            cur = d.children.get(name)
            if isinstance(cur, Dir) and isinstance(child, Dir):
                stack.append((cur, child))
            else:
                d.children[name] = child


def _files(name: str, node: Node) -> list[tuple[str, File]]:
    """The files under ``node`` (name, node), for scp's progress lines."""
    if isinstance(node, File):
        return [(name, node)]
    out = []
    stack: list[tuple[str, Node]] = [(name, node)]
    while stack:
        nm, n = stack.pop()
        if isinstance(n, File):
            out.append((nm.rsplit("/", 1)[-1], n))
        else:
            stack.extend((f"{nm}/{k}", c) for k, c in sorted(n.children.items(), reverse=True))
    return out
