"""Walking an image tree without being fooled by links.

A symbolic link inside data.root is followed only when its target lies inside the root, and
no folder or image is reached twice. Following links blindly turned a link from a class folder
to its parent into thousands of copies of the same photos under the wrong labels; refusing is
the only safe answer, because the walk cannot know which of two labels the user meant.

An image file reached twice (a link to an image that is also reached another way) is refused
too, not warned about: in the same class it silently doubles the image's weight, in another
class it is a contradicting label, in the other split it leaks val into train. A copy says
which of these the user wants.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.imageset import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
FIX = "replace the link with a copy, or point {name} at the real folder"


@dataclass(frozen=True)
class Node:
    """A folder or file as the walk reached it: the path under the root as written (`path`), its
    real location (`real`), and the last link on the way to it (`via`, None without one)."""

    path: str
    real: str
    via: str | None = None


def _visible(name: str) -> bool:
    return not name.startswith(".")   # .DS_Store, macOS '._x.jpg' resource forks, .git


def is_image_name(name: str) -> bool:
    """Whether a file of this name is one of the image types the tree may hold."""
    return _visible(name) and name.lower().endswith(EXTENSIONS)


class TreeWalk:
    """Folders and images under one root, each reached once, links kept inside the root.

    `name` is the setting the root came from (data.root, distill.unlabelled_root); messages name
    it with the fix. One walk object covers the whole tree, so a link from val/<class> to
    train/<class> is found whichever side is walked first.
    """

    def __init__(self, root: Path, name: str = "data.root"):
        self.root, self.name = Path(root), name
        self.real = os.path.realpath(root)
        self._seen: dict[str, Node] = {self.real: Node(str(root), self.real)}

    def _fix(self) -> str:
        return FIX.format(name=self.name)

    def _inside(self, target: str) -> bool:
        return target == self.real or target.startswith(self.real + os.sep)

    def _follow(self, link: str, folder_real: str) -> str:
        """The real target of `link` (found in the folder whose real path is `folder_real`)."""
        written = os.readlink(link)
        try:
            target = os.path.realpath(link, strict=True)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"link '{link}' -> '{written}' is a loop: it leads back to itself "
                                f"({self._fix()})") from None
            raise DataError(f"link '{link}' -> '{written}' points to nothing (its target does not "
                            f"exist); fix the link or remove it") from None
        if not self._inside(target):
            raise DataError(f"link '{link}' -> '{target}' points outside {self.name} '{self.root}'; "
                            f"the scan follows no link out of it ({self._fix()})")
        if os.path.isdir(target) and (folder_real == target or folder_real.startswith(target + os.sep)):
            raise DataError(f"link '{link}' -> '{target}' is a loop: it points to its own folder or "
                            f"a folder above it, which would repeat every image below it under other "
                            f"names and labels ({self._fix()})")
        return target

    def _register(self, node: Node, kind: str) -> Node:
        first = self._seen.get(node.real)
        if first is not None:
            link = node.via or first.via
            target = os.path.realpath(link) if link else node.real
            raise DataError(f"{kind} '{node.real}' is reached twice under {self.name} '{self.root}': as "
                            f"'{first.path}' and as '{node.path}' (link '{link}' -> '{target}'); "
                            f"{'its images' if kind == 'folder' else 'it'} would count twice, possibly "
                            f"under two labels or in both splits ({self._fix()})")
        self._seen[node.real] = node
        return node

    def top(self) -> Node:
        """The root's own node."""
        return self._seen[self.real]

    def enter(self, path: Path) -> Node:
        """The node of a folder directly below the root (a split such as train/ or val/)."""
        path = Path(path)
        parent = self._seen[self.real]
        if path.is_symlink():
            return self._register(Node(str(path), self._follow(str(path), parent.real), str(path)), "folder")
        return self._register(Node(str(path), os.path.join(parent.real, path.name)), "folder")

    def children(self, folder: Node) -> tuple[list[Node], list[Node]]:
        """(sub-folders, image files) directly in `folder`, sorted by name, each registered."""
        folders, images = [], []
        with os.scandir(folder.path) as entries:
            listed = sorted((e for e in entries if _visible(e.name)), key=lambda e: e.name)
        for e in listed:
            if e.is_symlink():
                # A broken link is refused whatever its name (it was meant to be something here);
                # a working link to a file that is not an image is never followed, so never checked.
                if os.path.exists(e.path) and not os.path.isdir(e.path) and not is_image_name(e.name):
                    continue
                target = self._follow(e.path, folder.real)
                node = Node(e.path, target, e.path)
                if os.path.isdir(target):
                    folders.append(self._register(node, "folder"))
                elif is_image_name(e.name):
                    images.append(self._register(node, "image"))
                continue
            node = Node(e.path, os.path.join(folder.real, e.name), folder.via)
            if e.is_dir(follow_symlinks=False):
                folders.append(self._register(node, "folder"))
            elif e.is_file(follow_symlinks=False) and is_image_name(e.name):
                images.append(self._register(node, "image"))
        return folders, images

    def images(self, folder: Node) -> list[Node]:
        """Every image at any depth below `folder`, sorted by path."""
        found, todo = [], [folder]
        while todo:
            sub, files = self.children(todo.pop())
            found += files
            todo += sub
        return sorted(found, key=lambda n: Path(n.path).parts)
