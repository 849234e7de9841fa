"""Data: the record schema and JSONL IO (records), local / s3:// storage, the built-in demo set
(demo) and mixing (mix)."""
