//! Networks for CLS in tch, each with its ONNX graph side by side.
