"""Names the command line shows before anything heavy is imported (torch, transformers, mteb): defined here once,
and imported from here by the modules that implement them (`backbone`, `backends`, `pooling`, `adapters`)."""

DEFAULT_MODEL = "smollm2-135m"  # the embedded backbone
DEFAULT_ENCODER = "gemma3-270m-nli"  # the trained default of `llm2comp encode` and `serve` (shipped in src/llm2comp/resources)
BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")  # what runs the network (backends.py)
POOLING_MODES = ("memory", "mean", "last", "prompteol")  # the built-in poolings (pooling.POOLINGS; a test keeps them equal)
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the recipe's: not k
# `llm2comp evaluate`: the tasks of the offline data folder, and the seed of its subsamples
DEFAULT_TASKS = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R", "Banking77Classification", "SciFact")
DEFAULT_EVAL_SEED = 42
