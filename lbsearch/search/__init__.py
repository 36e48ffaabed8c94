"""Search, the last stage: a query embedded into the shared space, the stored indexes searched, hits grouped,
fused across modalities (`fusion`) and calibrated (`calibration`); zero-shot labels (`zeroshot`, `templates`)."""
