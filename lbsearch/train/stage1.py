"""Stage 1, language: a small CLIP (image + text towers) trained from scratch on the toy world's stills.

On the real product this stage is OpenCLIP's pretraining (`lbsearch.train.data.load_open_clip` loads one); here
we need our own, and its language tower is what every other modality binds to in stage 2. Both stages run the
loop of `lbsearch.train.loop`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from lbsearch.models.encoder import Encoder
from lbsearch.models.factory import build_encoder
from lbsearch.models.tokenizer import EOS_ID, tokenize
from lbsearch.toyworld import VISIBLE_ATTRIBUTES
from lbsearch.train.config import TrainConfig
from lbsearch.train.data import CaptionSampler, ToyDataset, matching_pairs
from lbsearch.train.loop import Logger, batch_indices, run_schedule
from lbsearch.train.loss import LearnableTemperature, contrastive_loss


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
    temperature = LearnableTemperature()
    sampler = CaptionSampler(stage.full_caption_fraction, stage.template_fraction, stage.mention_weights)
    rng = random.Random(config.seed)
    tokens = TokenCache()
    batches = batch_indices(data.count("image"), schedule.batch_size, torch.Generator().manual_seed(config.seed))

    def batch_loss(logit_scale: torch.Tensor) -> torch.Tensor:
        indices = next(batches)
        texts, pinned = zip(*(sampler.sample(data.scenes[i], rng) for i in indices.tolist()), strict=True)
        pinned_mask = torch.tensor([[name in p for name in VISIBLE_ATTRIBUTES] for p in pinned])
        positives = matching_pairs(data.codes[indices], pinned_mask)
        media = vision(data.inputs("image", indices, model_config.vision))
        return contrastive_loss(media, text(tokens(list(texts))), logit_scale, positives)

    def trained() -> Encoder:
        return Encoder(model_config, vision, text, float(temperature().detach()), source="stage1")

    def probe(step: int) -> None:
        if check is None or not check_every or (step + 1) % check_every:
            return
        result = check(trained(), step + 1)
        vision.train()
        text.train()
        if log is not None:
            log({"stage": 1, "step": step + 1, **result})

    vision.train()
    text.train()
    named = [*vision.named_parameters(), *text.named_parameters()]
    run_schedule(schedule, named, temperature, batch_loss, {"stage": 1}, log, every, probe)
    return trained()
