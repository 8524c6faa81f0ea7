"""Data: LLaVA JSON and webdataset shards → checked, tokenised, grouped, padded batches (see docs/data.md).

records (record → sample, skip reasons) · llava_json (map-style dataset) · shards (streaming) · grouping
(modality/length batching) · collate (padding, batch statistics) · stats (logging) · datamodule · to_shards
(converter CLI) · image (preprocessing) · synthetic (the synthetic task).
"""
