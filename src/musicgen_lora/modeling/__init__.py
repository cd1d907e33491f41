"""The model and its maths: which class a checkpoint needs (`families`: MusicGen or MusicGen-Melody,
mono or stereo), loading it (`model`), the tiny offline models (`tiny`), the delay-pattern labels and
text batches (`collate`), a melody model's chroma + text prefix (`melody`), the masked per-codebook
loss (`loss`), the decoder forward over cached text states (`forward`) and generation with an
adapter (`generate`).

Imports: the standard library, torch, transformers, peft and `musicgen_lora.helpers` only. Modules
here take plain arguments, never run configurations.
"""
