"""Files in and out: the one image reader, the record of a trained model (checkpoints, weights files), and output
paths (checked before the work, results replaced atomically)."""
