"""Hand computations for the loss tests: plain Python over lists, independent of torch."""

import math


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) in nats."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
