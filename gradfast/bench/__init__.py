"""gradfast.bench: `python -m gradfast.bench` measures gradfast against stock PyTorch.

Modules, one concept each: workloads (gradient shapes of real models), pipelines (the
gradfast/torch pairs), checks (same results before timing), timing (interleaved repeats,
cache flushing, CUDA events, launch counts), roofline (bytes model, copy bandwidth),
environment (machine, versions, commit), report (table, JSON, Markdown, PNG).
"""
