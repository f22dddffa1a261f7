"""The document phase at scale: ranks, cross-rank pair dedup on signatures, and sized dataset parts."""
