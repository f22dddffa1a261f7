"""Text filters used by the stages: normalisation, near-duplicate detection, language ID, moderation,
and benchmark decontamination."""
