// Reading a Generate request off the wire inside the handler, rather than in
// gRPC's generated code, so that every way a request can be bad (too large,
// unparseable, a string field that is not UTF-8) reaches the service, gets a
// precise status and is counted in tinygpt_requests_total.
#pragma once
#include <grpcpp/grpcpp.h>

#include "tinygpt.pb.h"

namespace tinygpt {

// Parses a serialized tinygpt.v1.GenerateRequest. INVALID_ARGUMENT with the
// field's name when a string field (text, stop, request_id) is not valid
// UTF-8 ("text: not valid UTF-8"), or when the bytes are no GenerateRequest.
grpc::Status ParseGenerateRequest(const grpc::ByteBuffer& buffer, v1::GenerateRequest* req);
// INVALID_ARGUMENT when the bytes are no tinygpt.v1.GetModelInfoRequest.
grpc::Status ParseGetModelInfoRequest(const grpc::ByteBuffer& buffer);

}  // namespace tinygpt
