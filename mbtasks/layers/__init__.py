"""The block vocabulary of MobileNets (conv-BN-activation, depthwise separable, inverted residual, squeeze-excite)
and the inference copy (batch norm folded, channels-last)."""
