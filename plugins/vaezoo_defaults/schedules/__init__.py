"""Learning-rate schedules: constant, cosine, step and plateau, each with a linear warm-up."""
