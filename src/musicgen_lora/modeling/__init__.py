"""The model and its maths: loading MusicGen checkpoints and the tiny offline model (`model`), the
delay-pattern labels and text batches (`collate`), the masked per-codebook loss (`loss`), the decoder
forward over cached text states (`forward`) and generation with an adapter (`generate`).

Imports: the standard library, torch, transformers, peft and `musicgen_lora.helpers` only. Modules
here take plain arguments, never run configurations.
"""
