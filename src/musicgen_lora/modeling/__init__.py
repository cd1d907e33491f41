"""The model and its maths: which class a checkpoint needs (`families`: MusicGen or MusicGen-Melody,
mono or stereo), loading it (`model`), the tiny offline models (`tiny`), the delay-pattern labels and
text batches (`collate`), a melody model's chroma + text prefix (`melody`), the masked per-codebook
loss (`loss`), the decoder forward over cached text states (`forward`), generation with an adapter,
merged or not, continuing an audio prompt or not (`generate`) and adapters named by Hub repo id
(`hub`).

Imports: the standard library, torch, transformers, peft, huggingface_hub and `musicgen_lora.helpers`
only. Modules here take plain arguments, never run configurations.
"""
