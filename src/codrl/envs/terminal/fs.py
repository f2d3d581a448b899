"""In-memory file systems of the Terminal environment.

Everything here is plain Python data: a tree of :class:`Dir` and :class:`File` nodes. Nothing in
this package reads or writes the real disk, starts a process or evaluates text.

Paths inside a :class:`FileSystem` are lists of components below the root (``[]`` is ``/``).
:meth:`FileSystem.parts` turns a POSIX-style path string into components (``~``, ``.``, ``..``,
absolute and relative paths); the shell converts Windows-style paths before calling it.

Archives are files whose :attr:`File.archive` holds ``{"format": "tar" | "tar.gz" | "zip",
"entries": {"data/": None, "data/a.csv": "...", ...}}``: entry names end with ``/`` for folders and
map to the file's text otherwise.

Limits keep every command cheap whatever the agent types: at most :data:`MAX_DEPTH` components in
a path and :data:`MAX_NODES` nodes (archive entries included) on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Deepest path (in components) a machine accepts ("File name too long" beyond).
MAX_DEPTH = 48
#: Most nodes (files, folders and archive entries) one machine holds ("No space left on device").
MAX_NODES = 4000


class FsError(Exception):
    """A failed file-system operation. ``kind`` is one of :data:`ERROR_KINDS`; ``path`` the culprit."""

    def __init__(self, kind: str, path: str = "") -> None:
        super().__init__(f"{kind}: {path}")
        self.kind = kind
        self.path = path


#: Error kind -> POSIX reason text.
ERROR_KINDS: dict[str, str] = {
    "noent": "No such file or directory",
    "notdir": "Not a directory",
    "isdir": "Is a directory",
    "exists": "File exists",
    "notempty": "Directory not empty",
    "full": "No space left on device",
    "toolong": "File name too long",
}


@dataclass(eq=False)
class File:
    """A file: text ``content``, permission bits ``mode`` and, for archives, their entries."""

    content: str = ""
    mode: int = 0o644
    archive: dict[str, Any] | None = None

    def size(self) -> int:
        """Bytes shown by listings (an archive counts its entries' text plus a header each)."""
        if self.archive is not None:
            return sum(64 + len(v or "") for v in self.archive["entries"].values())
        return len(self.content.encode("utf-8", "replace"))


@dataclass(eq=False)
class Dir:
    """A folder: ``children`` by name, permission bits ``mode``."""

    children: dict[str, Node] = field(default_factory=dict)
    mode: int = 0o755


Node = File | Dir


def clone(node: Node) -> Node:
    """A deep copy of ``node`` (iterative, so deep trees are fine)."""
    if isinstance(node, File):
        arch = None if node.archive is None else {"format": node.archive["format"],
                                                  "entries": dict(node.archive["entries"])}
        return File(node.content, node.mode, arch)
    top = Dir(mode=node.mode)
    stack = [(node, top)]
    while stack:
        src, dst = stack.pop()
        for name, child in src.children.items():
            if isinstance(child, Dir):
                new = Dir(mode=child.mode)
                stack.append((child, new))
                dst.children[name] = new
            else:
                dst.children[name] = clone(child)
    return top


def count(node: Node) -> int:
    """Nodes in ``node``'s tree, itself and archive entries included."""
    total = 0
    stack = [node]
    while stack:
        n = stack.pop()
        total += 1
        if isinstance(n, Dir):
            stack.extend(n.children.values())
        elif n.archive is not None:
            total += len(n.archive["entries"])
    return total


def walk_entries(name: str, node: Node) -> dict[str, str | None]:
    """Archive entries of ``node`` stored under ``name`` (folders end with ``/``), sorted."""
    out: dict[str, str | None] = {}
    stack: list[tuple[str, Node]] = [(name, node)]
    while stack:
        path, n = stack.pop()
        if isinstance(n, Dir):
            out[path + "/"] = None
            for child_name, child in n.children.items():
                stack.append((f"{path}/{child_name}", child))
        else:
            out[path] = n.content
    return dict(sorted(out.items()))


def mode_string(node: Node) -> str:
    """``ls -l`` style permissions, e.g. ``drwxr-xr-x`` or ``-rw-r--r--``."""
    bits = "".join(("r" if node.mode & (4 << s) else "-") + ("w" if node.mode & (2 << s) else "-")
                   + ("x" if node.mode & (1 << s) else "-") for s in (6, 3, 0))
    return ("d" if isinstance(node, Dir) else "-") + bits


class FileSystem:
    """One machine's files: a root folder and the machine's home folder (a POSIX path)."""

    def __init__(self, home: str) -> None:
        self.root = Dir()
        self.home = home
        self.home_parts = [p for p in home.split("/") if p]

    # -- paths --------------------------------------------------------------------------------
    def parts(self, path: str, cwd: list[str]) -> list[str]:
        """Components of POSIX-style ``path`` seen from folder ``cwd`` (``~`` is the home folder).

        ``..`` above the root stays at the root. Raises :class:`FsError` ``toolong`` for paths
        deeper than :data:`MAX_DEPTH`.
        """
        if path == "~" or path.startswith("~/"):
            base, rest = list(self.home_parts), path[1:]
        elif path.startswith("/"):
            base, rest = [], path
        else:
            base, rest = list(cwd), path
        for comp in rest.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if base:
                    base.pop()
                continue
            base.append(comp)
            if len(base) > MAX_DEPTH:
                raise FsError("toolong", path[:200])
        return base

    def get(self, parts: list[str]) -> Node | None:
        """The node at ``parts``, or None (also when a component on the way is a file)."""
        node: Node = self.root
        for p in parts:
            if not isinstance(node, Dir):
                return None
            nxt = node.children.get(p)
            if nxt is None:
                return None
            node = nxt
        return node

    def get_dir(self, parts: list[str]) -> Dir | None:
        node = self.get(parts)
        return node if isinstance(node, Dir) else None

    def is_dir(self, parts: list[str]) -> bool:
        return isinstance(self.get(parts), Dir)

    def size(self) -> int:
        return count(self.root)

    # -- changes ------------------------------------------------------------------------------
    def make_room(self, extra: int) -> None:
        """Raise :class:`FsError` ``full`` when ``extra`` more nodes would not fit."""
        if self.size() + extra > MAX_NODES:
            raise FsError("full")

    def attach(self, parts: list[str], node: Node) -> None:
        """Put ``node`` at ``parts`` (replacing what was there); the parent folder must exist."""
        if not parts:
            raise FsError("exists", "/")
        parent = self.get(parts[:-1])
        if parent is None:
            raise FsError("noent")
        if not isinstance(parent, Dir):
            raise FsError("notdir")
        parent.children[parts[-1]] = node

    def detach(self, parts: list[str]) -> Node:
        """Remove and return the node at ``parts``."""
        parent = self.get_dir(parts[:-1]) if parts else None
        if parent is None or parts[-1] not in parent.children:
            raise FsError("noent")
        return parent.children.pop(parts[-1])

    def mkdirs(self, parts: list[str], parents: bool = True, room_checked: bool = False) -> Dir:
        """Create the folder at ``parts`` (and, with ``parents``, missing folders above it).

        ``room_checked``: the caller already reserved room (skips the size check).
        """
        node: Node = self.root
        for i, p in enumerate(parts):
            assert isinstance(node, Dir)
            nxt = node.children.get(p)
            if nxt is None:
                if not parents and i < len(parts) - 1:
                    raise FsError("noent")
                if not room_checked:
                    self.make_room(len(parts) - i)
                    room_checked = True
                nxt = Dir()
                node.children[p] = nxt
            elif not isinstance(nxt, Dir):
                raise FsError("exists" if i == len(parts) - 1 else "notdir")
            node = nxt
        assert isinstance(node, Dir)
        return node

    def write(self, path: str, content: str | None = None, mode: int | None = None,
              archive: dict[str, Any] | None = None) -> None:
        """Build-time helper: create a file (``content`` str) or folder (None) at absolute ``path``.

        Missing parent folders are created. Used to lay out machines from a task description.
        """
        parts = self.parts(path, [])
        if content is None and archive is None:
            d = self.mkdirs(parts)
            if mode is not None:
                d.mode = mode
            return
        self.mkdirs(parts[:-1])
        self.attach(parts, File(content or "", 0o644 if mode is None else mode, archive))

    def snapshot(self) -> dict[str, Any]:
        """Every path -> ``[kind, mode, content or archive]``: for tests and comparisons."""
        out: dict[str, Any] = {}
        stack: list[tuple[str, Node]] = [("", self.root)]
        while stack:
            path, n = stack.pop()
            if isinstance(n, Dir):
                out[path or "/"] = ["dir", n.mode]
                for name, child in n.children.items():
                    stack.append((f"{path}/{name}", child))
            else:
                out[path] = ["file", n.mode, n.archive if n.archive is not None else n.content]
        return dict(sorted(out.items()))
