"""Reading ``params.yaml``: :func:`load_config` reads the file (a key given twice is refused), applies a profile
(``params/<name>.yaml``: only the keys it changes) and ``--set`` overrides, and builds the validated
:class:`~dirl.config.sections.Config`. :func:`write_profile` applies a profile to the file in place;
:func:`save_resolved` writes the resolved config beside an output."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from dirl.config.fields import ConfigError, _build
from dirl.config.restrict import MACHINE_SECTIONS, UNDECLARED, restrict
from dirl.config.sections import MOVED, SECTIONS, Config
from dirl.io import write_text_atomic
from dirl.workspace import root

PROFILES_DIR = Path(__file__).resolve().parents[2] / "params"  # the profiles of a source checkout


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping holding the same key twice (PyYAML keeps the last one silently)."""

    def construct_document(self, node):
        _no_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _no_duplicate_keys(node, prefix: str, seen_nodes: set) -> None:
    if id(node) in seen_nodes:  # an alias of a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in first:
                    raise ConfigError(
                        f"duplicate key '{where}' at line {line} (first at line {first[key]}): "
                        f"YAML would keep only the last value; remove one"
                    )
                first[key] = line
            _no_duplicate_keys(value_node, where, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, f"{prefix}[{i}]", seen_nodes)


def _read_yaml(path: Path) -> Any:
    """A YAML file's data; ConfigError (one line: file, line, what the parser expected) when it cannot be read."""
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the project root or pass --params)")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:  # one line: where, and what the parser expected
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None


def profile_path(profile: str | os.PathLike) -> Path:
    """``smoke`` -> ``params/smoke.yaml`` of the project; a path is taken as it is."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        return p
    where = root() / "params"
    found = where / f"{profile}.yaml"
    if not found.is_file():
        where = PROFILES_DIR
        found = where / f"{profile}.yaml"
    if not found.is_file():
        names = sorted(q.stem for q in where.glob("*.yaml"))
        raise ConfigError(f"profile {profile!r} not found: expected {found} (profiles: {', '.join(names)})")
    return found


def profile_overrides(profile: str | os.PathLike) -> dict[str, Any]:
    """A profile (``params/<name>.yaml``: only the keys that differ from params.yaml) as dotted overrides."""
    path = profile_path(profile)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of sections holding only the keys it changes")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            # a nested mapping is walked, except the values that are mappings themselves (a search space)
            if isinstance(value, dict) and name not in ("tune.search_space",):
                walk(value, name)
            else:
                flat[name] = value

    walk(data, "")
    return flat


def _refuse_moved(data: dict, src: str) -> None:
    """An old params file that still holds a key which has moved (``MOVED``) gets a one-line fix."""
    for key, new in MOVED.items():
        section, name = key.split(".", 1)
        if isinstance(data.get(section), dict) and name in data[section]:
            raise ConfigError(
                f"{src}: '{key}' has moved to '{new}' (machine settings live in the cluster section): move it there"
            )


def config_from_dict(data: dict | None, src: str = "<dict>") -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: the top level must be a mapping of sections, got {type(data).__name__}")
    _refuse_moved(data, src)
    hidden = data.get(UNDECLARED)
    if hidden:  # a stage's config (Config.to_dict): restricted alike, never filled with defaults
        data = {k: v for k, v in data.items() if k != UNDECLARED}
        cfg = _build(Config, data, "", src)
        keys = set(hidden["keys"])
        params = [
            f"{s}.{f.name}"
            for s in SECTIONS
            if s not in MACHINE_SECTIONS and s not in keys
            for f in dataclasses.fields(getattr(cfg, s))
            if f"{s}.{f.name}" not in keys
        ]
        return restrict(cfg, params, hidden["stage"])
    return _build(Config, data, "", src)


def params_source(path: str | os.PathLike, profile: str | os.PathLike | None = None) -> str:
    """How errors name where a config came from: ``params.yaml``, or ``params.yaml + params/smoke.yaml``."""
    return str(path) if profile is None else f"{path} + {profile_path(profile)}"


def load_config(
    path: str | os.PathLike = "params.yaml", overrides: dict | None = None, profile: str | os.PathLike | None = None
) -> Config:
    """Load ``params.yaml``, then a ``profile`` overlay (:func:`profile_overrides`), then dotted ``overrides``,
    into a validated :class:`Config`.

    A params file must hold every section (``SECTIONS``): a missing one would silently take the code defaults.
    A key given twice is refused (YAML would keep the last one). ``tune.search_space`` is checked here only as a
    mapping: its entries are the training package's to judge (``dirl.train.search_space``), which the tune stage and
    ``dirl config`` do before any work.
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        raise ConfigError(
            f"{path}: the file is empty: a params file must hold every section "
            f"({', '.join(SECTIONS)}); copy params.yaml or a profile from params/"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    missing = [s for s in SECTIONS if s not in data]
    if missing:
        raise ConfigError(
            f"{path}: missing section(s) {', '.join(missing)}: a params file must hold every section "
            f"({', '.join(SECTIONS)}); a missing one would silently take the code defaults"
        )
    src = params_source(path, profile)
    if profile is not None:
        for key, value in profile_overrides(profile).items():
            _set_known(data, key, value, str(profile_path(profile)))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, src)


def _set_known(data: dict, key: str, value: Any, src: str) -> None:
    """``set_dotted`` for an overlay: the key must exist in the base (a typo would add a section or key)."""
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            break
        node = node[p]
    else:
        if parts[-1] in node:
            node[parts[-1]] = value
            return
    hint = f" (moved to '{MOVED[key]}')" if key in MOVED else ""
    raise ConfigError(f"{src}: unknown key '{key}'{hint}: a profile may only change keys of params.yaml")


def write_profile(params: str | os.PathLike, profile: str | os.PathLike) -> dict[str, tuple[Any, Any]]:
    """Apply a profile to the params file in place, keeping its comments and layout (ruamel round trip);
    validated first. Returns ``{key: (old, new)}`` of the values that changed."""
    from ruamel.yaml import YAML

    params = Path(params)
    load_config(params, profile=profile)  # refuses a bad profile before anything is written
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(params.read_text())
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in profile_overrides(profile).items():
        node = doc
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        if old != value:  # written as PyYAML writes it (3.0e-05, not 3e-05, which PyYAML reads as a string)
            node[leaf] = rt.load(yaml.safe_dump({"v": value}, default_flow_style=True, width=4096))["v"]
            changed[key] = (old, value)
    import io as _io

    buf = _io.StringIO()
    rt.dump(doc, buf)
    write_text_atomic(params, buf.getvalue())
    return changed


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-3)`` sets ``d["train"]["lr"]``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a YAML value (``train.lr=3e-4``, ``tune.enabled=false``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def save_resolved(cfg: Config | dict, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside an output (atomically) and return its path."""
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return write_text_atomic(Path(out_dir) / name, yaml.safe_dump(data, sort_keys=False))
