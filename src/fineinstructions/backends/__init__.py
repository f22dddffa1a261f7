"""Text-generation backends behind one interface (base.py), the model registry, and embeddings."""
