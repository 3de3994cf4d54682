import onnx_onp

result = onnx_onp.sanitize(
    "fixtures/models/tiny_badnet_cifar10.onnx",       # a path or an onnx.ModelProto
    "fixtures/data/cifar10_defense_sample.npz",       # clean images: a path or (x, y) arrays
    spec="fixtures/models/tiny_badnet_cifar10.json",  # preprocessing (and the trigger, for the test ASR)
    test_data="fixtures/data/cifar10_test_sample.npz")
print(result.verdict, result.target)                  # backdoor suspected 0
print(result.outcome, result.exit_code)               # the gate's outcome and the CLI's exit code
print(result.pruned, result.report["final_check"])    # {layer: [units]}, the evidence that decided
if result.sanitized:                                  # only a model that passed the final check is saved
    result.save("tiny_badnet_cifar10.clean.onnx")
result.write_html("tiny_badnet_cifar10.html")
