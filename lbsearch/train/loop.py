"""The training loop both stages run: AdamW with a warm-up and cosine schedule, the contrastive step, progress.

Stage 1 (`lbsearch.train.stage1`) and stage 2 (`lbsearch.train.stage2`) differ only in what they train and how
a batch becomes a loss; `run_schedule` does the rest for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lbsearch.errors import ConfigError
from lbsearch.train.config import Schedule
from lbsearch.train.loss import LearnableTemperature

Logger = Callable[[dict], None]


def _no_decay(name: str, parameter: nn.Parameter) -> bool:
    """Biases, norms, embeddings and the temperature are not decayed (CLIP's convention)."""
    return parameter.ndim < 2 or "embedding" in name or "logit_scale" in name


def make_optimizer(named_parameters: Iterable[tuple[str, nn.Parameter]], schedule: Schedule) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, weight decay on matrices only."""
    decay, plain = [], []
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            (plain if _no_decay(name, parameter) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=schedule.betas, eps=1e-6)


def learning_rate(step: int, schedule: Schedule) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` down to ``lr * min_lr_ratio``."""
    if step < schedule.warmup_steps:
        return schedule.lr * (step + 1) / schedule.warmup_steps
    progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
    floor = schedule.lr * schedule.min_lr_ratio
    return floor + (schedule.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices, reshuffled every epoch; a batch never repeats an index."""
    if count < batch_size:
        raise ConfigError(f"{count} training items cannot fill a batch of {batch_size}")
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def run_schedule(
    schedule: Schedule,
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    temperature: LearnableTemperature,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    progress: Mapping[str, Any],
    log: Logger | None = None,
    every: int = 50,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """``schedule.steps`` optimiser steps over ``named_parameters`` and the temperature's logit scale.

    ``batch_loss(logit_scale)`` draws the next batch and returns its loss. ``log`` receives ``progress`` (what
    identifies the run, e.g. ``{"stage": 1}``) with the step, loss, learning rate, logit scale and speed every
    ``every`` steps and at the last one; ``after_step(step)`` runs after each step (a probe, say).
    """
    optimizer = make_optimizer([*named_parameters, *temperature.named_parameters()], schedule)
    started = time.perf_counter()
    for step in range(schedule.steps):
        lr = learning_rate(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = batch_loss(temperature())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step % every == 0 or step == schedule.steps - 1):
            log({**progress, "step": step, "loss": round(float(loss.detach()), 4), "lr": lr,
                 "logit_scale": round(float(temperature().detach()), 3),
                 "steps_per_s": round((step + 1) / (time.perf_counter() - started), 3)})
        if after_step is not None:
            after_step(step)
