"""Defaults shared by every action config, each defined once."""

HORIZON = 8
"""H, steps per action chunk."""
ACTION_DIM = 7
"""A, action dimensions (LIBERO/robosuite OSC_POSE: 3 position deltas, 3 axis-angle deltas, gripper)."""
CODEBOOK_SIZE = 256
"""K, codes per token position of the learned tokenizers (also the OpenVLA bins per dimension)."""
LATENT_DIM = 16
"""Width of each latent token of the MLP tokenizers."""
HIDDEN = 128
"""Hidden width of the MLP encoders and decoders."""
