"""ddpm-objectives-hf."""
