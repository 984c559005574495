"""Calibration: data readers, INT8 post-training quantization backends, accuracy control.

`import edgecompress.calibration` needs torch only; onnxruntime, nncf and openvino are imported
by the functions that use them.
"""
from edgecompress.calibration.accuracy_control import (MAX_FLOAT_LAYERS, PrecisionRecord, PrecisionSelector,
                                                        Selection, choose_precision)
from edgecompress.calibration.backends import (BACKENDS, CALIBRATORS, METHODS, SYMMETRIC_ACTIVATIONS,
                                               Calibrator, check_method, quantize_int8)
from edgecompress.calibration.evaluation import (array_batches, artifact_evaluator, dataset_arrays,
                                                 layer_sensitivity, openvino_runner, ort_runner)
from edgecompress.calibration.readers import (DEFAULT_COUNT, calibration_batches, check_batches, nncf_dataset,
                                              onnx_input, ort_reader)

__all__ = ["BACKENDS", "CALIBRATORS", "Calibrator", "DEFAULT_COUNT", "MAX_FLOAT_LAYERS", "METHODS",
           "PrecisionRecord", "PrecisionSelector", "SYMMETRIC_ACTIVATIONS", "Selection", "array_batches",
           "artifact_evaluator", "calibration_batches", "check_batches", "check_method", "choose_precision",
           "dataset_arrays", "layer_sensitivity", "nncf_dataset", "onnx_input", "openvino_runner", "ort_reader",
           "ort_runner", "quantize_int8"]
