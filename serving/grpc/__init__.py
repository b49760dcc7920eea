"""OIP gRPC: the vendored ``grpc_predict_v2.proto``, its generated modules (``scripts/gen-grpc.sh``)
and the message codec. The server is :mod:`serving.grpc_server`."""
