"""The data: the unaligned dataset with the official preprocessing, the benchmark datasets, the synthetic set."""
