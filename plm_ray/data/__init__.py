"""Data stages: corpus -> tokenizer -> tokenize/pack -> masking; labeled data for the sweep."""
