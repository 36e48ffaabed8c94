"""Prompt templates for zero-shot classification, per modality, as the official evaluation uses them.

A template is a format string with one ``{c}`` field for the class name (``template.format(c="dog")``).
Image uses the 80 OpenAI ImageNet templates of CLIP; video and depth use the same 80 with the word "photo" replaced by
"video" and "depth photo" (templates without "photo", such as "a sculpture of a {c}.", are unchanged); thermal uses the
plain 80 (the official list that is active; its "thermal infrared photo" variant is commented out); audio uses a single
template, "a sound of {c}.".
"""

from __future__ import annotations

from collections.abc import Sequence

from lbsearch.errors import ConfigError

# The 80 prompt templates OpenAI published for ImageNet zero-shot (also `open_clip.zero_shot_metadata`), in their order.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {c}.",
    "a photo of many {c}.",
    "a sculpture of a {c}.",
    "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.",
    "a rendering of a {c}.",
    "graffiti of a {c}.",
    "a bad photo of the {c}.",
    "a cropped photo of the {c}.",
    "a tattoo of a {c}.",
    "the embroidered {c}.",
    "a photo of a hard to see {c}.",
    "a bright photo of a {c}.",
    "a photo of a clean {c}.",
    "a photo of a dirty {c}.",
    "a dark photo of the {c}.",
    "a drawing of a {c}.",
    "a photo of my {c}.",
    "the plastic {c}.",
    "a photo of the cool {c}.",
    "a close-up photo of a {c}.",
    "a black and white photo of the {c}.",
    "a painting of the {c}.",
    "a painting of a {c}.",
    "a pixelated photo of the {c}.",
    "a sculpture of the {c}.",
    "a bright photo of the {c}.",
    "a cropped photo of a {c}.",
    "a plastic {c}.",
    "a photo of the dirty {c}.",
    "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.",
    "a photo of the {c}.",
    "a good photo of the {c}.",
    "a rendering of the {c}.",
    "a {c} in a video game.",
    "a photo of one {c}.",
    "a doodle of a {c}.",
    "a close-up photo of the {c}.",
    "a photo of a {c}.",
    "the origami {c}.",
    "the {c} in a video game.",
    "a sketch of a {c}.",
    "a doodle of the {c}.",
    "a origami {c}.",
    "a low resolution photo of a {c}.",
    "the toy {c}.",
    "a rendition of the {c}.",
    "a photo of the clean {c}.",
    "a photo of a large {c}.",
    "a rendition of a {c}.",
    "a photo of a nice {c}.",
    "a photo of a weird {c}.",
    "a blurry photo of a {c}.",
    "a cartoon {c}.",
    "art of a {c}.",
    "a sketch of the {c}.",
    "a embroidered {c}.",
    "a pixelated photo of a {c}.",
    "itap of the {c}.",
    "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.",
    "a plushie {c}.",
    "a photo of the nice {c}.",
    "a photo of the small {c}.",
    "a photo of the weird {c}.",
    "the cartoon {c}.",
    "art of the {c}.",
    "a drawing of the {c}.",
    "a photo of the large {c}.",
    "a black and white photo of a {c}.",
    "the plushie {c}.",
    "a dark photo of a {c}.",
    "itap of a {c}.",
    "graffiti of the {c}.",
    "a toy {c}.",
    "itap of my {c}.",
    "a photo of a cool {c}.",
    "a photo of a small {c}.",
    "a tattoo of the {c}.",
)


def _replace_photo(templates: Sequence[str], replacement: str) -> tuple[str, ...]:
    return tuple(template.replace("photo", replacement) for template in templates)


TEMPLATES: dict[str, tuple[str, ...]] = {
    "video": _replace_photo(OPENAI_IMAGENET_TEMPLATES, "video"),
    "audio": ("a sound of {c}.",),
    "depth": _replace_photo(OPENAI_IMAGENET_TEMPLATES, "depth photo"),
    "thermal": OPENAI_IMAGENET_TEMPLATES,
    "image": OPENAI_IMAGENET_TEMPLATES,
}


def templates_for(modality: str) -> tuple[str, ...]:
    """The official templates of ``modality`` (format strings with a ``{c}`` field)."""
    try:
        return TEMPLATES[modality]
    except KeyError:
        known = tuple(TEMPLATES)
        raise ConfigError(f"no prompt templates for modality {modality!r}; expected one of {known}") from None


def prompts_for(class_name: str, templates: Sequence[str]) -> list[str]:
    """Every template filled with ``class_name``."""
    return [template.format(c=class_name) for template in templates]
