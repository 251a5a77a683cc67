"""The build side: model front-ends (scikit-learn, ONNX), the per-profile build pipeline and
its gates. Imports the kernel and the build stack (onnx, skl2onnx, scikit-learn); nothing on a
device imports this package."""
