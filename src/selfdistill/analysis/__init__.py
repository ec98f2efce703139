"""Looking at results: metrics (top-1, NLL, ECE, agreement, predictive KL), the evaluation of a saved
network (``selfdistill eval``), the report over runs (``selfdistill report``) and plots.

``metrics`` holds pure functions and accumulators of tensors, which the engine's per-epoch evaluation
uses too; the other modules stand above the engine and use it."""
