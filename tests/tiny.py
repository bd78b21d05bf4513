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


def tiny_unet(out_channels: int = 1):
    """A seeded two-block `UNet2DModel` for 1-channel 8×8 images (2 output channels for a learned variance)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
