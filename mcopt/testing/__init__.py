"""Model builders and datasets for tests, benchmarks and examples; not part of the compiler's API.

:mod:`mcopt.testing.zoo` builds the models (generated CNNs, the onnx wheel's light models with seeded
random weights) and loads the bundled trained LeNets and MNIST test digits. Nothing in the compiler
(``mcopt.api``, ``mcopt.cli``, the passes and targets) imports this package.
"""
