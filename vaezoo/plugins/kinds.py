"""The kinds of things plugins register: one table, read by the hooks, the registry, recipes,
checkpoints and the CLI. Plural names are the registry's kinds (`vaezoo list encoders`); singular
names are recipe keys and the `kind` of a model file's component records."""

KINDS = {
    "recipes": "recipe",
    "models": "model",
    "encoders": "encoder",
    "decoders": "decoder",
    "priors": "prior",
    "losses": "loss",
    "datasets": "dataset",
    "samplers": "sampler",
    "schedules": "schedule",
    "loggers": "logger",
}
COMPONENT_KINDS = ("datasets", "encoders", "decoders", "priors", "losses")  # a recipe's component tables
MODEL_PARTS = ("encoder", "decoder", "prior", "loss")  # the components a model family may take
