"""`data.exclude`: images a person decided to leave out (a wrong label, a val copy of a training
photo), named in the config rather than deleted from the tree, so the decision is reviewable and
the tree stays as it was delivered.

An entry is a path relative to data.root (train/<class>/<file>); `data.exclude` is a list of
them, or the path of a text file with one per line (blank lines and # comments ignored). Every
entry must match an image of the tree: a typo would otherwise leave the image in without a word.
The excluded images are out of both splits before the audit reads them, so excluding a val copy
also settles its leak.
"""
from __future__ import annotations

from pathlib import Path

from runtimes import errors

SETTING = "data.exclude"


class ExcludeError(ValueError, errors.ConfigError):
    """data.exclude cannot be read, or names an image the tree does not hold."""


def _entry(text: str, root: Path) -> str:
    """One entry as a root-relative POSIX path (backslashes, './' and an absolute path under
    the root are accepted)."""
    path = text.strip().replace("\\", "/")
    if Path(path).is_absolute():
        try:
            path = Path(path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise ExcludeError(f"{SETTING} entry '{text}' is outside data.root '{root}'; give paths "
                               f"relative to data.root, like train/<class>/<file>") from None
    while path.startswith("./"):
        path = path[2:]
    return path


def excluded_entries(exclude: list[str] | str | None, root: Path) -> list[str]:
    """The entries of `data.exclude` (a list, or a text file's lines), sorted, each once."""
    if not exclude:
        return []
    if isinstance(exclude, str):
        listing = Path(exclude).expanduser()
        if not listing.is_file():
            raise ExcludeError(
                f"{SETTING} '{exclude}' is not a file; give the path of a text file with one image "
                f"path (relative to data.root) per line, or a list of image paths")
        lines = [line.split("#", 1)[0] for line in listing.read_text().splitlines()]
        exclude = [line for line in lines if line.strip()]
    return sorted({_entry(e, root) for e in exclude if e.strip()})


def split_off(exclude: list[str] | str | None, root: Path, present: set[str]) -> list[str]:
    """The images to leave out (root-relative paths, sorted); an entry matching no image of
    `present` is an error naming it."""
    wanted = excluded_entries(exclude, root)
    unknown = [e for e in wanted if e not in present]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ExcludeError(
            f"{SETTING} entry '{unknown[0]}'{more} matches no image under data.root '{root}' (entries "
            f"are paths relative to it, like train/<class>/<file>); fix or remove the entry")
    return wanted
