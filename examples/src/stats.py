"""Small statistics helpers (with a bug for examples/02_debug_then_fix.json)."""


def mean(values, seen=[]):
    seen.append(len(values))
    return sum(values) / len(values)
