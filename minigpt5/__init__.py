"""MiniGPT-5: a causal LLM with generative vokens, a feature mapper and a frozen Stable Diffusion."""

from minigpt5.import_noise import drop_known_import_noise

drop_known_import_noise()  # before diffusers or torchao is imported by anything below this package
