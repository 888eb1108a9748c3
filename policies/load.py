"""Routers from disk: a trained router folder (`decomposer/`, `allocator/`), or an untrained one
initialised from a zoo checkpoint, as the config's `router` section describes."""
from __future__ import annotations

from pathlib import Path

from core.config import Config
from core.storage import local_copy
from policies.policy_lm import PolicyLM
from policies.router import PolicyRouter


def trained_router(cfg: Config, path: str | Path, model_ids: list[str], label: str,
                   temperature: float = 0.0) -> PolicyRouter:
    """A trained router folder (`allocator/`, and `decomposer/` when one was trained) as a `PolicyRouter`."""
    path = local_copy(path)
    if not (path / "allocator").exists():
        raise FileNotFoundError(f"no trained router at {path} (expected {path / 'allocator'})")
    dec = PolicyLM.from_pretrained(path / "decomposer") if (path / "decomposer").exists() else None
    return PolicyRouter(dec, PolicyLM.from_pretrained(path / "allocator"), model_ids,
                        templates=cfg.router.templates, temperature=temperature, max_steps=cfg.reason.max_steps,
                        max_tokens=cfg.reason.decompose_max_tokens, seed=cfg.seed, label=label)


def load_router(cfg: Config, model_ids: list[str], path: str | Path | None = None) -> tuple[PolicyRouter, str]:
    """(router, description): the trained router in `path` (which must exist), else the config's router
    settings (`router.path` when it holds one, else untrained policies from a zoo checkpoint)."""
    r = cfg.router
    if path is not None:
        return (trained_router(cfg, path, model_ids, f"trained:{path}", r.temperature),
                f"trained router from {path}")
    if r.path and (Path(r.path) / "allocator").exists():
        return (trained_router(cfg, r.path, model_ids, f"trained:{r.path}", r.temperature),
                f"trained router from {r.path}")
    if not r.init and not cfg.zoo.models:
        raise ValueError("router.init: no trained router (router.path) and no zoo; name the policies' checkpoint")
    init = r.init or cfg.zoo.models[0].name
    path = cfg.zoo_dir / init if (cfg.zoo_dir / init).exists() else Path(init)
    lm = PolicyLM.from_pretrained(path)
    dec = lm if r.decomposer == "policy" else None
    router = PolicyRouter(dec, lm, model_ids, label=f"untrained:{init}", templates=r.templates,
                          temperature=r.temperature, max_steps=cfg.reason.max_steps,
                          max_tokens=cfg.reason.decompose_max_tokens, seed=cfg.seed)
    return router, f"UNTRAINED router (policies initialised from {init}; decomposition: {r.decomposer})"
