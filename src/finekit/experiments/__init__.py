"""What repeats runs: the compare ladder (rungs x sizes x seeds), repeated seeds, k-fold
cross-validation and their aggregation. Each run is a plain `finetune()`; nothing below
this layer knows it is part of an experiment."""
