"""Model soups (Wortsman et al. 2022): average the weights of several checkpoints.

Uniform soup: the plain average. Greedy soup: sort the checkpoints by their own held-out score,
then add each to the soup only if the soup's score does not drop. Checkpoints must share the
model config (same architecture); typically they are fine-tunes or late checkpoints of one run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
import os

import torch

from curation.storage import Storage
from training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def average_state_dicts(states: Sequence[StateDict]) -> StateDict:
    """Element-wise mean (in float64, cast back) of state dicts with identical keys and shapes."""
    if not states:
        raise ValueError("need at least one state dict to average")
    keys = states[0].keys()
    for i, state in enumerate(states[1:], 1):
        if state.keys() != keys:
            raise ValueError(f"state dict {i} has different parameters from the first; soups need one architecture")
    out: StateDict = {}
    for key in keys:
        ref = states[0][key]
        if not torch.is_floating_point(ref):
            out[key] = ref.clone()
            continue
        total = torch.zeros_like(ref, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        out[key] = (total / len(states)).to(ref.dtype)
    return out


def _load_models(paths: Sequence[str | os.PathLike], storage: Storage | None) -> tuple[list[StateDict], dict]:
    checkpoints = [load_checkpoint(p, storage=storage) for p in paths]
    configs = {str(c["model_config"]) for c in checkpoints}
    if len(configs) > 1:
        raise ValueError("checkpoints have different model configs; a soup needs one architecture")
    return [c["model"] for c in checkpoints], checkpoints[0]


def uniform_soup(paths: Sequence[str | os.PathLike], storage: Storage | None = None) -> StateDict:
    """The average of all given checkpoints' weights."""
    states, _ = _load_models(paths, storage)
    return average_state_dicts(states)


def greedy_soup(paths: Sequence[str | os.PathLike], score: Callable[[StateDict], float],
                storage: Storage | None = None) -> tuple[StateDict, list[int]]:
    """Greedy soup; ``score`` evaluates weights on held-out data (higher is better).

    Returns the soup and the indices (into ``paths``) of the checkpoints it contains.
    """
    states, _ = _load_models(paths, storage)
    individual = [score(s) for s in states]
    order = sorted(range(len(states)), key=lambda i: individual[i], reverse=True)
    chosen = [order[0]]
    best = individual[order[0]]
    for i in order[1:]:
        candidate = average_state_dicts([states[j] for j in chosen + [i]])
        value = score(candidate)
        if value >= best:
            chosen.append(i)
            best = value
        log.info("greedy soup: checkpoint %d -> %.4f (%s)", i, value, "kept" if i in chosen else "dropped")
    return average_state_dicts([states[j] for j in chosen]), chosen


def save_soup(weights: StateDict, template: str | os.PathLike, out: str | os.PathLike,
              storage: Storage | None = None) -> str:
    """Write a soup as an eval-loadable checkpoint, taking config + tokenizer from ``template``."""
    base = load_checkpoint(template, storage=storage)
    return save_checkpoint({"step": base.get("step", 0), "model_config": base["model_config"], "model": weights,
                            "tokenizer": base["tokenizer"], "soup": True}, out, storage)
