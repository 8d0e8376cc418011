"""Stage ``train`` (host, torch): stage 1 (exit-aware pre-training) and stage 2 (frozen backbone, every head)."""
