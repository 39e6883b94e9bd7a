"""Training and what a model makes: the loop, evaluation, pictures and sampling, devices and precision,
torchrun, signals, progress and the epoch's files."""
