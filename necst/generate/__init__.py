"""generate stage: flow plans -> packets -> valid frames -> capture files.

``craft`` builds frames for whole arrays of packets (TCP state, checksums, payload bytes);
``sampler`` streams a capture from the three trained models.
"""
from necst.generate.craft import PacketFields, build_frames, craft, plan_packets
from necst.generate.sampler import GenerateResult, Sampler, generate, load_generator

__all__ = ["PacketFields", "build_frames", "craft", "plan_packets", "GenerateResult", "Sampler", "generate",
           "load_generator"]
