"""A synthetic five-modality world whose truth is known: seeded scenes, their media files and captions.

``World(seed).scenes("train", n)`` samples scenes; ``render_modality(scene, modality)`` draws one as an array for
training; ``write_library(root, scenes)`` writes them as PNG/WAV/MP4 files plus a manifest for ingestion.
"""

from lbsearch.toyworld.render import (
    LIBRARY_PATHS,
    MANIFEST,
    RENDERERS,
    LibraryEntry,
    LibraryLayout,
    RenderConfig,
    read_manifest,
    render_modality,
    write_library,
    write_scene,
)
from lbsearch.toyworld.world import (
    CAPTION_TEMPLATES,
    CARRIED_BY,
    COLOURS,
    DIRECTIONS,
    DISTANCES,
    SHAPES,
    SOUNDS,
    SPLITS,
    TEMPERATURES,
    VISIBLE_ATTRIBUTES,
    Combination,
    Nuisance,
    Scene,
    World,
    WorldSpec,
    attributes_of,
    captions_for,
)

__all__ = [
    "CAPTION_TEMPLATES",
    "CARRIED_BY",
    "COLOURS",
    "DIRECTIONS",
    "DISTANCES",
    "LIBRARY_PATHS",
    "MANIFEST",
    "RENDERERS",
    "SHAPES",
    "SOUNDS",
    "SPLITS",
    "TEMPERATURES",
    "VISIBLE_ATTRIBUTES",
    "Combination",
    "LibraryEntry",
    "LibraryLayout",
    "Nuisance",
    "RenderConfig",
    "Scene",
    "World",
    "WorldSpec",
    "attributes_of",
    "captions_for",
    "read_manifest",
    "render_modality",
    "write_library",
    "write_scene",
]
