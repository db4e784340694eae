#include "server/request_wire.h"

#include <google/protobuf/unknown_field_set.h>

#include <string>
#include <vector>

namespace tinygpt {

bool IsStrictUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    int need;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) need = 2, lo = 0xA0;
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) need = 2;
    else if (b == 0xED) need = 2, hi = 0x9F;  // no UTF-16 surrogates
    else if (b == 0xF0) need = 3, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) need = 3, hi = 0x8F;  // up to U+10FFFF
    else return false;
    if (s.size() - i - 1 < static_cast<size_t>(need)) return false;
    for (int k = 1; k <= need; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + k]);
      if (c < lo || c > hi) return false;
      lo = 0x80, hi = 0xBF;
    }
    i += need + 1;
  }
  return true;
}

grpc::Status ParseGenerateRequest(const grpc::ByteBuffer& buffer, v1::GenerateRequest* req) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return grpc::Status(grpc::INTERNAL, "request: cannot read the message");
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (req->ParseFromString(bytes)) {
    // Protobuf refuses a proto3 string that is not UTF-8 when it checks them
    // (the default); a build without the check would let one through.
    if (!IsStrictUtf8(req->text())) return grpc::Status(grpc::INVALID_ARGUMENT, "text: not valid UTF-8");
    for (const auto& s : req->stop())
      if (!IsStrictUtf8(s)) return grpc::Status(grpc::INVALID_ARGUMENT, "stop: not valid UTF-8");
    if (!IsStrictUtf8(req->request_id())) return grpc::Status(grpc::INVALID_ARGUMENT, "request_id: not valid UTF-8");
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
      if (field && field->type() == google::protobuf::FieldDescriptor::TYPE_STRING && !IsStrictUtf8(f.length_delimited()))
        return grpc::Status(grpc::INVALID_ARGUMENT, field->name() + ": not valid UTF-8");
    }
  }
  return grpc::Status(grpc::INVALID_ARGUMENT, "request: not a valid tinygpt.v1.GenerateRequest message");
}

}  // namespace tinygpt
