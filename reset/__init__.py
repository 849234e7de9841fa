"""ReSet: reconciling instruction following and faithfulness (EMNLP 2024) as a library."""
