"""YAML, read strictly and safely: a key given twice in one mapping is an error (PyYAML would keep the last
silently), and every problem is a one-line ``UserError`` naming where the text came from. Bare recipe names
find the bundled recipes (``configs/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, did_you_mean, one_line
from ..fileio import read_small_file

# what PyYAML's own constructors raise for a tagged scalar they cannot read (`!!int x`, `!!bool x`,
# `!!timestamp x`, `!!float 1_e`) instead of a YAMLError
TAG_VALUE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` still work), and
    reports a value its tag cannot hold (``!!int x``) as a YAML error, as it reports a tag it does not know."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except TAG_VALUE_ERRORS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            what = repr(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            raise yaml.constructor.ConstructorError(None, None, f"{tag} cannot hold {what}",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep)  # a YAML error naming what the tag expected
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {line})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` strictly and safely; a problem is a one-line ``UserError`` naming ``where``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({one_line(exc)})") from None
    except RecursionError:
        raise UserError(f"{where}: not valid YAML (nested too deeply)") from None


def read_yaml_file(path: Path, where: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; an unreadable, binary, oversized or malformed file, or one
    that is not a regular file, is a ``UserError``."""
    raw = read_small_file(path, where)
    if b"\0" in raw:
        raise UserError(f"{where}: is a binary file, not YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: is not UTF-8 text (byte {exc.start})") from None
    data = parse_yaml(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: the top level must be a mapping of sections, not a {type(data).__name__}")
    return data


BUNDLED_RECIPES = Path(__file__).parent.parent / "configs"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (``--config``); a bare name finds a bundled recipe."""
    p = Path(path)
    if not p.exists():
        bundled = BUNDLED_RECIPES / f"{p.name.removesuffix('.yaml')}.yaml"
        if p.parent == Path(".") and bundled.exists():
            p = bundled
        else:
            names = sorted(c.stem for c in BUNDLED_RECIPES.glob("*.yaml"))
            raise UserError(f"--config {path}: no such file{did_you_mean(str(path), names)} "
                            f"(bundled recipes: {', '.join(names)}; see `selfdistill recipes`)")
    return read_yaml_file(p, f"--config {path}")
