"""Storage only: atomic writes, the model file's header and tensors, the training state, run folders,
PNG bytes and image folders. Knows no device, no Hub, no trainer and no dataset."""
