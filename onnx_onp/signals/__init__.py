"""Stage 4: per-neuron signals, including the backdoor signal from synthesized triggers."""
