"""File formats: the lowest layer of the model path (safetensors shards read and written tensor by tensor, dtype
conversions of raw tensor bytes). The stages (merge, compress, export, serve) import these, never the other way round.
"""
