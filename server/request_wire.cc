#include "server/request_wire.h"

#include <google/protobuf/unknown_field_set.h>

#include <string>
#include <vector>

#include "common/utf8.h"

namespace tinygpt {

namespace {
bool Bytes(const grpc::ByteBuffer& buffer, std::string* bytes) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  bytes->reserve(buffer.Length());
  for (const auto& s : slices) bytes->append(reinterpret_cast<const char*>(s.begin()), s.size());
  return true;
}
}  // namespace

grpc::Status ParseGetModelInfoRequest(const grpc::ByteBuffer& buffer) {
  std::string bytes;
  if (!Bytes(buffer, &bytes)) return grpc::Status(grpc::INTERNAL, "request: cannot read the message");
  v1::GetModelInfoRequest req;
  if (!req.ParseFromString(bytes))
    return grpc::Status(grpc::INVALID_ARGUMENT, "request: not a valid tinygpt.v1.GetModelInfoRequest message");
  return grpc::Status::OK;
}

grpc::Status ParseGenerateRequest(const grpc::ByteBuffer& buffer, v1::GenerateRequest* req) {
  std::string bytes;
  if (!Bytes(buffer, &bytes)) return grpc::Status(grpc::INTERNAL, "request: cannot read the message");
  if (req->ParseFromString(bytes)) {
    // Protobuf refuses a proto3 string that is not UTF-8 when it checks them
    // (the default); a build without the check would let one through.
    if (!IsValidUtf8(req->text())) return grpc::Status(grpc::INVALID_ARGUMENT, "text: not valid UTF-8");
    for (const auto& s : req->stop())
      if (!IsValidUtf8(s)) return grpc::Status(grpc::INVALID_ARGUMENT, "stop: not valid UTF-8");
    if (!IsValidUtf8(req->request_id())) return grpc::Status(grpc::INVALID_ARGUMENT, "request_id: not valid UTF-8");
    return grpc::Status::OK;
  }
  // Parse failed: read the bytes without the schema to say why. A string field
  // that is not UTF-8 is the common case (a client sending raw bytes as text).
  google::protobuf::UnknownFieldSet fields;
  if (fields.ParseFromString(bytes)) {
    const auto& d = v1::GenerateRequest::descriptor();
    for (int i = 0; i < fields.field_count(); ++i) {
      const auto& f = fields.field(i);
      if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
      const auto* field = d->FindFieldByNumber(f.number());
      if (field && field->type() == google::protobuf::FieldDescriptor::TYPE_STRING && !IsValidUtf8(f.length_delimited()))
        return grpc::Status(grpc::INVALID_ARGUMENT, field->name() + ": not valid UTF-8");
    }
  }
  return grpc::Status(grpc::INVALID_ARGUMENT, "request: not a valid tinygpt.v1.GenerateRequest message");
}

}  // namespace tinygpt
