"""Data, the front door: `from core.data import X` for what core.images (decoding image files),
core.sources (random-access sources chosen by data.source) and core.pipeline (the grain
pipeline of batches, with resumable state) provide. Each lives in its own module; this one
only re-exports, so that callers need not know the split.
"""
from __future__ import annotations

from core.images import (IMAGE_EXTS, ImageModeError, array_to_image, crop_resize,
                         decode_image, is_image_name, to_rgb8)
from core.pipeline import (SkipCounter, iterate_uint8, iterator_state_to_json,
                           make_dataset, restore_iterator)
from core.sources import (PROCEDURAL, SOURCES, ArrayRecordSource, ArraySource,
                          DataError, FolderSource, Source, data_fingerprint, decode_record,
                          encode_record, make_source, npz_source, reference_indices,
                          write_array_record)

__all__ = ["IMAGE_EXTS", "ImageModeError", "array_to_image", "crop_resize", "decode_image",
           "is_image_name", "to_rgb8", "SkipCounter", "iterate_uint8", "iterator_state_to_json",
           "make_dataset", "restore_iterator", "PROCEDURAL", "SOURCES", "ArrayRecordSource",
           "ArraySource", "DataError", "FolderSource", "Source", "data_fingerprint",
           "decode_record", "encode_record", "make_source", "npz_source", "reference_indices",
           "write_array_record"]
