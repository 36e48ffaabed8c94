"""The LanguageBind training method: stage 1 (a CLIP for language), stage 2 (binding a modality to it).

    config = preset("toy")                                   # or "test" (tiny, seconds)
    data = ToyDataset.build(World(0), "train", {...}, config.data.render, (56, 112))
    image = train_stage1(config, data)                       # image + language towers from scratch
    audio = bind_toy(image, data, config.stage2["audio"])    # frozen language, LoRA, patch masking
    save_checkpoint(audio, "demo_models/audio")              # the official layout, LoRA merged

`bind_files` does stage 2 on real (file, caption) pairs from an OpenCLIP start point (`load_open_clip`).
`lbsearch.train.recipe` reproduces the demo checkpoint set (`train_toy_set`, ``lbsearch train toy``).
"""

from lbsearch.train.config import (
    BOUND_MODALITIES,
    LoraSettings,
    Schedule,
    Stage1Config,
    Stage2Config,
    TowerSizes,
    ToyData,
    TrainConfig,
    preset,
)
from lbsearch.train.data import (
    CaptionedFiles,
    CaptionSampler,
    ToyDataset,
    class_name,
    describe,
    encoder_from_open_clip,
    load_open_clip,
    model_inputs,
)
from lbsearch.train.loss import LearnableTemperature, contrastive_loss
from lbsearch.train.stage1 import train_stage1
from lbsearch.train.stage2 import PatchMasking, bind, bind_files, bind_toy, modality_config, start_tower

__all__ = [
    "BOUND_MODALITIES",
    "CaptionSampler",
    "CaptionedFiles",
    "LearnableTemperature",
    "LoraSettings",
    "PatchMasking",
    "Schedule",
    "Stage1Config",
    "Stage2Config",
    "TowerSizes",
    "ToyData",
    "ToyDataset",
    "TrainConfig",
    "bind",
    "bind_files",
    "bind_toy",
    "class_name",
    "contrastive_loss",
    "describe",
    "encoder_from_open_clip",
    "load_open_clip",
    "modality_config",
    "model_inputs",
    "preset",
    "start_tower",
    "train_stage1",
]
