"""Config fuzz: every field of configs/tiny.yaml and configs/paper.yaml given a wrong type, an
out-of-range value and a misspelt sibling key; an unknown model id; a cycle of base configs. Each ends
the entry point with one line naming the field and exit code 2 (in process for all of them, and as a real
`python -m pipelines.train` for one)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
import yaml
from pydantic import BaseModel

from core.config import Config, add_config_args, config_from_args

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["tiny.yaml", "paper.yaml"]
# fields whose domain is their whole type: any value of the type is valid, so no value is out of range
# (tasks.enabled names registered tasks; that registry lives above the config's floor and is checked
# when the world is built)
FREE = {"seed", "serve.host", "wandb.project", "zoo.models.*.price.paper_model", "pool.use_zoo", "pool.colocate",
        "pool.models.*.path", "pool.models.*.url", "pool.models.*.remote_model", "pool.models.*.api_key_env",
        "pool.models.*.chat", "plan.gpu", "train.init", "train.init_decomposer", "train.init_allocator",
        "tasks.enabled", "pool.models.*.price.paper_model"}


def leaves(tree, prefix: tuple = ()) -> list[tuple]:
    """Dotted paths (as tuples) of a YAML tree's values; a list of scalars is one value."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in leaves(v, (*prefix, k))]
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        return [p for i, v in enumerate(tree) for p in leaves(v, (*prefix, i))]
    return [prefix]


def _unwrap(ann):
    """The type under Optional / Annotated, and the Annotated metadata met on the way."""
    meta = []
    while True:
        if typing.get_origin(ann) is typing.Annotated:  # a Field(...) in it carries its constraints
            meta += [c for m in ann.__metadata__ for c in (getattr(m, "metadata", None) or [m])]
            ann = ann.__origin__
        elif typing.get_origin(ann) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann, meta
            ann = args[0]
        else:
            return ann, meta


def field_of(path: tuple):
    """(annotation, constraints) of the config field at `path`."""
    model, ann, meta = Config, Config, []
    for part in path:
        if isinstance(part, int):
            ann, meta = _unwrap(typing.get_args(ann)[0])
        else:
            info = model.model_fields[part]
            ann, meta = _unwrap(info.annotation)
            meta = meta + list(info.metadata)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return ann, meta


def out_of_range(path: tuple):
    """A value of the field's type outside its domain, or None when its domain is the whole type."""
    if path[-1] == "ref" and path[-2] == "price":
        return "no-such-model"  # an unknown model id: not in the LiteLLM price table
    ann, meta = field_of(path)
    if typing.get_origin(ann) is typing.Literal:
        return "not-a-choice"
    if typing.get_origin(ann) is list:  # a constrained item type
        item, item_meta = _unwrap(typing.get_args(ann)[0])
        bad = "not-a-choice" if typing.get_origin(item) is typing.Literal else _outside(item, item_meta)
        return None if bad is None else [bad]
    return _outside(ann, meta)


def _outside(ann, meta):
    for m in meta:
        step = 1 if ann is int else 0.5
        if isinstance(m, at.Ge):
            return m.ge - step
        if isinstance(m, at.Gt):
            return m.gt
        if isinstance(m, at.Le):
            return m.le + step
        if isinstance(m, at.Lt):
            return m.lt
        if isinstance(m, at.MinLen) and ann is str:
            return ""
    return None


def dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def run_cli(config: Path, overrides: list[str], capsys) -> tuple[int, str]:
    """An entry point's config step: (exit code, what it printed on stderr)."""
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", str(config), *(x for o in overrides for x in ("--set", o))])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        config_from_args(args)
    return exit_.value.code, capsys.readouterr().err


def faults(name: str, kind: str) -> list[tuple[str, str]]:
    """(override, the field its error must name) for every field of the config."""
    tree = yaml.safe_load((ROOT / "configs" / name).read_text())
    out = []
    for path in leaves(tree):
        if kind == "wrong type":
            out.append((f"{dotted(path)}={{wrong: type}}", dotted(path)))
        elif kind == "unknown key":
            key = dotted((*path[:-1], f"{path[-1]}_typo"))
            out.append((f"{key}=1", key))
        elif kind == "out of range":
            bad = out_of_range(path)
            generic = dotted(tuple("*" if isinstance(p, int) else p for p in path))
            if bad is None:
                assert generic in FREE, f"{dotted(path)} has a domain narrower than its type: constrain it"
                continue
            assert generic not in FREE, generic
            out.append((f"{dotted(path)}={yaml.safe_dump(bad, default_flow_style=True).strip()}", dotted(path)))
    return out


@pytest.mark.parametrize("kind", ["wrong type", "out of range", "unknown key"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_field(name, kind, capsys):
    cases = faults(name, kind)
    assert len(cases) >= (20 if kind == "out of range" else 40)
    wrong = []
    for override, field in cases:
        code, err = run_cli(ROOT / "configs" / name, [override], capsys)
        if code != 2 or err.count("\n") != 1 or not err.startswith(f"config error: {field}"):
            wrong.append((override, code, err))
    assert not wrong, f"{len(wrong)} of {len(cases)}:\n" + "\n".join(map(repr, wrong[:20]))


@pytest.mark.parametrize("override, field", [
    ("eval.methods=[single:no-such-model]", "eval.methods.0"),
    ("eval.methods=[random, all:t-9]", "eval.methods.1"),
    ("zoo.models.3.price.ref=gpt-4o-typo", "zoo.models.3.price.ref"),
])
def test_an_unknown_model_id(override, field, capsys):
    code, err = run_cli(ROOT / "configs" / "test.yaml", [override], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"config error: {field}:"), err
    assert "no-such-model" in err or "t-9" in err or "gpt-4o-typo" in err


def test_a_base_cycle(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text(f"base: a.yaml\nzoo: {{dir: {ROOT / 'runs' / 'tests' / 'zoo'}}}\n")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    for start in ("a.yaml", "self.yaml"):
        code, err = run_cli(tmp_path / start, [], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("config error: base: a cycle"), err


def test_the_real_entry_point():
    """`python -m pipelines.train` itself: exit code 2, one line on stderr, nothing else, nothing started."""
    args = ["--config", "configs/paper.yaml", "--set", "eval.methods=[single:gpt-5-nope]"]
    done = subprocess.run([sys.executable, "-m", "pipelines.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("config error: eval.methods.0:"), done.stderr
