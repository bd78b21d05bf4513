"""The tiny training run the end-to-end tests share: a two-block UNet without attention on 16-image batches, a few
sample images, no tracker. Each test file adds what it needs (its number of sampling steps, timesteps, ...)."""

TINY = [
    "--block_out_channels", "8", "16",
    "--layers_per_block", "1",
    "--norm_num_groups", "4",
    "--attention_resolution_index", "-1",
    "--train_batch_size", "16",
    "--logging_steps", "2",
    "--num_sample_images", "4",
    "--report_to", "none",
]  # fmt: skip
