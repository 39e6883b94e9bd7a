"""Training: the loop, evaluation, devices and precision, torchrun, signals, progress and the epoch's files."""
