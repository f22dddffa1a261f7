"""Reading inputs (JSONL, Parquet, text folders, Hugging Face datasets) and writing Parquet atomically."""
