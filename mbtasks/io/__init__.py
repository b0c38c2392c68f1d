"""Files in and out: the checkpoint record and weights files."""
