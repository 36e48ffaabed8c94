"""Stage 1, language: a small CLIP (image + text towers) trained from scratch on the toy world's stills.

On the real product this stage is OpenCLIP's pretraining (`lbsearch.train.data.load_open_clip` loads one); here
we need our own, and its language tower is what every other modality binds to in stage 2. The same optimiser,
schedule and loop pieces serve stage 2.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from lbsearch.errors import ConfigError
from lbsearch.models.encoder import Encoder
from lbsearch.models.factory import build_encoder
from lbsearch.models.tokenizer import EOS_ID, tokenize
from lbsearch.models.towers import TextTower, VisionTower
from lbsearch.toyworld import VISIBLE_ATTRIBUTES
from lbsearch.train.config import Schedule, TrainConfig
from lbsearch.train.data import CaptionSampler, ToyDataset, matching_pairs
from lbsearch.train.loss import LearnableTemperature, contrastive_loss

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


def reset_embeddings(vision: VisionTower | None, text: TextTower | None) -> None:
    """CLIP's initialisation of the embedding tables (PyTorch's N(0, 1) default is far too large for them)."""
    if vision is not None:
        embeddings = vision.vision_model.embeddings
        width = embeddings.position_embedding.embedding_dim
        nn.init.normal_(embeddings.position_embedding.weight, std=width**-0.5)
        nn.init.normal_(embeddings.class_embedding, std=width**-0.5)
    if text is not None:
        nn.init.normal_(text.text_model.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(text.text_model.embeddings.position_embedding.weight, std=0.01)


class TokenCache:
    """Token ids of texts, remembered, and cut after the batch's last end-of-text token.

    Stage-1 texts repeat a lot, and BPE costs more than the tiny language tower. The tower is causal and reads
    the first end-of-text position, so padding beyond it never changes the result; dropping it saves work.
    """

    def __init__(self) -> None:
        self._ids: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [text for text in dict.fromkeys(texts) if text not in self._ids]
        for text, row in zip(missing, tokenize(missing) if missing else [], strict=True):
            self._ids[text] = row[: int(row.argmax()) + 1]
        rows = [self._ids[text] for text in texts]
        ids = torch.full((len(rows), max(len(row) for row in rows)), EOS_ID, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        return ids


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_stage1(
    config: TrainConfig,
    data: ToyDataset,
    log: Logger | None = None,
    every: int = 50,
    check: Callable[[Encoder, int], dict] | None = None,
    check_every: int = 0,
) -> Encoder:
    """Train the image and language towers together; returns the image encoder (modality "image").

    ``log`` receives ``{"stage": 1, "step", "loss", "lr", "logit_scale", "steps_per_s"}`` every ``every`` steps;
    ``check(encoder, step)`` (optional, every ``check_every`` steps) returns extra numbers to log, e.g. a probe.
    """
    torch.manual_seed(config.seed)
    stage, schedule = config.stage1, config.stage1.schedule
    model_config = config.towers.image_config(config.data.render.size)
    encoder = build_encoder(model_config)
    vision, text = encoder.vision, encoder.text
    reset_embeddings(vision, text)
    temperature = LearnableTemperature()
    named = [*vision.named_parameters(), *text.named_parameters(), *temperature.named_parameters()]
    optimizer = make_optimizer(named, schedule)
    sampler = CaptionSampler(stage.full_caption_fraction, stage.template_fraction, stage.mention_weights)
    rng = random.Random(config.seed)
    tokens = TokenCache()
    batches = batch_indices(data.count("image"), schedule.batch_size, torch.Generator().manual_seed(config.seed))
    vision.train()
    text.train()
    started = time.perf_counter()
    for step in range(schedule.steps):
        set_learning_rate(optimizer, learning_rate(step, schedule))
        indices = next(batches)
        texts, pinned = zip(*(sampler.sample(data.scenes[i], rng) for i in indices.tolist()), strict=True)
        pinned_mask = torch.tensor([[name in p for name in VISIBLE_ATTRIBUTES] for p in pinned])
        positives = matching_pairs(data.codes[indices], pinned_mask)
        media = vision(data.inputs("image", indices, model_config.vision))
        loss = contrastive_loss(media, text(tokens(list(texts))), temperature(), positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step % every == 0 or step == schedule.steps - 1):
            log({"stage": 1, "step": step, "loss": round(float(loss.detach()), 4),
                 "lr": optimizer.param_groups[0]["lr"], "logit_scale": round(float(temperature().detach()), 3),
                 "steps_per_s": round((step + 1) / (time.perf_counter() - started), 3)})
        if check is not None and check_every and (step + 1) % check_every == 0:
            trained = Encoder(model_config, vision, text, float(temperature().detach()), source="stage1")
            result = check(trained, step + 1)
            vision.train()
            text.train()
            if log is not None:
                log({"stage": 1, "step": step + 1, **result})
    return Encoder(model_config, vision, text, float(temperature().detach()), source="stage1")
