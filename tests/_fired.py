"""Whether a Deferred has its result, for tests that move time and bytes by hand."""


def fired(d):
    """
    True once ``d`` has its result. (``d.called`` is true as soon as a
    callback of its chain returned another Deferred, still waiting on it.)
    """
    seen = []
    d.addBoth(lambda result: seen.append(True) or result)
    return bool(seen)
