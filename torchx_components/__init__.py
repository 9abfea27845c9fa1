"""TorchX components of recsys: train, evaluate (files loadable as ./torchx_components/<file>.py:<fn>)."""
