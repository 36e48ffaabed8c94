"""A library's model set: which checkpoint embeds each modality, the encoders loaded from them, and their ids.

The set is recorded in the library's database, so later runs and searches need no model flags. Encoders are
loaded lazily, once per process, and only the towers a call needs (a text query loads only the language tower);
all of them share one language tower, as the released checkpoints do.
"""

from __future__ import annotations

from collections.abc import Mapping

from lbsearch.errors import ConfigError
from lbsearch.modalities import check_all, lookup
from lbsearch.models import Encoder, load_checkpoint
from lbsearch.models.registry import MODEL_SETS, model_set
from lbsearch.storage.database import Database

MODEL_SET_SETTING = "model_set"
MODEL_IDS_SETTING = "model_ids"


class ModelSet:
    def __init__(self, db: Database, device: str, precision: str):
        self.db = db
        self.device = device
        self.precision = precision
        self._encoders: dict[tuple[str, bool], Encoder] = {}

    @property
    def sources(self) -> dict[str, str]:
        """``{modality: hub id or folder}`` as recorded with the library."""
        return dict(self.db.get_setting(MODEL_SET_SETTING) or {})

    def use(self, models: str | Mapping[str, str]) -> dict[str, str]:
        """Record a named set ("demo", "languagebind") or ``{modality: checkpoint}``; named modalities replace
        those of the current set, others stay."""
        chosen = model_set(models) if isinstance(models, str) else dict(models)
        check_all(list(chosen))
        merged = {**self.sources, **chosen}
        self.db.set_setting(MODEL_SET_SETTING, merged)
        self._encoders = {key: enc for key, enc in self._encoders.items() if merged.get(key[0]) == enc.source}
        return merged

    def encoder(self, modality: str, *, text_only: bool = False) -> Encoder:
        """The loaded encoder of ``modality`` (loading it on first use)."""
        lookup(modality)
        for key in ((modality, False), (modality, True)) if text_only else ((modality, False),):
            if key in self._encoders:
                return self._encoders[key]
        source = self.sources.get(modality)
        if source is None:
            raise ConfigError(
                f"no {modality} model in this library's model set; choose one with "
                f"`lbsearch index --model {modality}=HUB_ID_OR_FOLDER` or `--models NAME` "
                f"({', '.join(MODEL_SETS)})"
            )
        shared = next((e for e in self._encoders.values() if e.text is not None), None)
        towers = ("text",) if text_only else ("vision", "text")
        encoder = load_checkpoint(source, self.device, self.precision, text_tower=shared, towers=towers)
        if encoder.modality != modality:
            raise ConfigError(f"{source} is a {encoder.modality} checkpoint, but is set for {modality}")
        self._encoders[(modality, text_only)] = encoder
        return encoder

    def model_id(self, modality: str) -> int:
        """The database id of the set's model for ``modality`` (registered when it first indexed something)."""
        ids = self.db.get_setting(MODEL_IDS_SETTING) or {}
        source = self.sources.get(modality)
        entry = ids.get(modality)
        if entry is None or entry["source"] != source:
            encoder = self.encoder(modality, text_only=True)
            model_id = self.db.register_model(source, modality, encoder.weights_hash, encoder.dim)
            self.db.set_setting(MODEL_IDS_SETTING, {**ids, modality: {"source": source, "id": model_id}})
            return model_id
        return int(entry["id"])
