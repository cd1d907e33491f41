"""The model and its maths: loading MusicGen checkpoints and the tiny offline model (`model`), the
delay-pattern labels and text batches (`collate`), the masked per-codebook loss (`loss`), the decoder
forward over cached text states (`forward`), generation with an adapter, merged or not, continuing
an audio prompt or not (`generate`) and adapters named by Hub repo id (`hub`).

Imports: the standard library, torch, transformers, peft, huggingface_hub and `musicgen_lora.helpers`
only. Modules here take plain arguments, never run configurations.
"""
