"""Student SFT: pretokenized shards → packed batches → Ray Train + DeepSpeed ZeRO → HF export."""
