"""Entry points for `ray job submit` (cluster runs of the palign_ray pipeline)."""
