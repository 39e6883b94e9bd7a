"""Files: atomic writes, model files (written, loaded, their header read without torch), the training
state, run folders, pictures and image folders."""
