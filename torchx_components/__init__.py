"""TorchX components of recsys: train, evaluate, plan (files loadable as ./torchx_components/<file>.py:<fn>)."""
