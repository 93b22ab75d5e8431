"""Triton's gRPC inference protocol (``inference.GRPCInferenceService``) for the gateway.

``inference.proto`` is the gateway's own subset of Triton's protocol (same names and
field numbers); ``inference_pb2`` is protoc's output from it. ``convert`` maps its
messages to the codec in ``serving.kserve``; ``service`` serves it with grpc.aio.
"""
