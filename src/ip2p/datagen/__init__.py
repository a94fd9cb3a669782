"""Training-data generation for InstructPix2Pix (Brooks et al. 2023, section 3.1).

Two stages, as in the paper:

1. **Text** (:mod:`.text`, :mod:`.backends`, :mod:`.finetune`): a language model turns an image
   caption into an edit instruction and an edited caption.
2. **Images** (:mod:`.images`, :mod:`.p2p`, :mod:`.clipfilter`, :mod:`.store`): Stable Diffusion
   renders both captions from one noise with Prompt-to-Prompt attention sharing (Hertz et al.
   2022), CLIP filters the pairs, and the kept pairs are written in the original on-disk layout.

Heavy modules (torch, diffusers, transformers) are imported only by the functions that need them.
"""

from .text import (
    DELIMITER_EDIT,
    DELIMITER_PROMPT,
    STOP,
    EditRecord,
    TextOptions,
    format_completion,
    format_prompt,
    generate_text,
    parse_completion,
    read_captions,
    read_prompts,
    write_prompts,
)

__all__ = [
    "DELIMITER_EDIT",
    "DELIMITER_PROMPT",
    "STOP",
    "EditRecord",
    "TextOptions",
    "format_completion",
    "format_prompt",
    "generate_text",
    "parse_completion",
    "read_captions",
    "read_prompts",
    "write_prompts",
]
