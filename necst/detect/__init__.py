"""detect stage: the autoencoder anomaly detector and its baselines.

``Detector(mode="window").fit(normal_packets).score(packets)``; ``save`` / ``load`` use the safe
bundle (necst.bundle). TensorFlow is imported only when an autoencoder is trained or its Keras
model is asked for; scoring runs in numpy.
"""
from necst.detect.detector import (BaseDetector, Detector, IsolationForestDetector, LOFDetector,
                                   load)

__all__ = ["BaseDetector", "Detector", "IsolationForestDetector", "LOFDetector", "load"]
