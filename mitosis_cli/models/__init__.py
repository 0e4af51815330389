"""Models whose last hidden layer is what `mitosis` studies: `features(x) -> (N, W)` and a linear `head`.

`spec` describes a model without torch (`ModelSpec`, the architectures and their checks); `registry`
builds one (`build_model`). This package imports neither, so describing a model stays cheap.
"""
