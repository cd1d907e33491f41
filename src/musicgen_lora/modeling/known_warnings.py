"""Silence third-party warnings known to be false for MusicGen, where they arise and nowhere else.

- transformers validates special token ids against the vocabulary and warns that 2048 is outside
  0..2047; for MusicGen 2048 *is* the pad / bos / decoder-start token, one past the codebook entries,
  by design (the embedding tables have 2049 rows).
- peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates in favour of
  `is_activation_checkpointing`: a FutureWarning about peft's code, not ours.
Every other warning, from the same loggers and modules, still shows.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

MUSICGEN_SPECIAL_TOKEN = 2048
_SPECIAL_TOKEN_WARNING = re.compile(
    rf"Model config: \w+_token_id must be `None` or an integer within the vocabulary .* got {MUSICGEN_SPECIAL_TOKEN}\."
)
_CONFIG_LOGGER = "transformers.configuration_utils"


class _SpecialTokenFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SPECIAL_TOKEN_WARNING.search(record.getMessage())


@contextlib.contextmanager
def musicgen_warnings_silenced():
    """While building, loading or wrapping a MusicGen model."""
    logger = logging.getLogger(_CONFIG_LOGGER)
    special_tokens = _SpecialTokenFilter()
    logger.addFilter(special_tokens)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            yield
    finally:
        logger.removeFilter(special_tokens)
