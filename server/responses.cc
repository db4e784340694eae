#include "server/responses.h"

namespace tinygpt {
namespace {

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ToProto(const TokenLogprobs& lp, int32_t token, v1::TokenLogprob* out) {
  out->set_token_id(token);
  out->set_logprob(lp.logprob);
  for (const auto& [id, v] : lp.top) {
    auto* t = out->add_top();
    t->set_token_id(id);
    t->set_logprob(v);
  }
}

template <class Msg>
void AddLogprobs(const std::vector<int32_t>& tokens, const std::vector<TokenLogprobs>& lps, Msg* m) {
  for (size_t i = 0; i < lps.size() && i < tokens.size(); ++i) ToProto(lps[i], tokens[i], m->add_logprobs());
}

// Entry i is the logprob of prompt token i + 1.
template <class Msg>
void AddPromptLogprobs(const std::vector<int32_t>& prompt, const std::vector<TokenLogprobs>& lps, Msg* m) {
  for (size_t i = 0; i < lps.size() && i + 1 < prompt.size(); ++i) ToProto(lps[i], prompt[i + 1], m->add_prompt_logprobs());
}

// The fields a unary response and a stream's last message share.
template <class Msg>
void FillSummary(const CallOutcome& o, Msg* m) {
  m->set_request_id(o.id);
  m->mutable_usage()->set_prompt_tokens(o.prompt_tokens);
  m->mutable_usage()->set_generated_tokens(o.generated());
  auto* t = m->mutable_timings();
  const Sequence* s = o.first();
  t->set_queued_seconds(Seconds(s->first_scheduled - s->arrival));
  // A scoring request (max_new_tokens 0) has no first token.
  if (s->num_generated() > 0) t->set_time_to_first_token_seconds(Seconds(s->first_token - s->arrival));
  t->set_total_seconds(Seconds(Clock::now() - o.start));
}

}  // namespace

void FillGenerateResponse(const CallOutcome& o, v1::GenerateResponse* resp) {
  const ChoiceOutcome& c0 = o.choices[0];
  resp->mutable_token_ids()->Add(c0.tokens.begin(), c0.tokens.end());
  resp->set_text(c0.text);
  resp->set_finish_reason(ToProto(c0.reason));
  AddLogprobs(c0.tokens, c0.logprobs, resp);
  AddPromptLogprobs(o.prompt, o.prompt_logprobs, resp);
  if (o.choices.size() > 1) {
    for (size_t i = 0; i < o.choices.size(); ++i) {
      const ChoiceOutcome& c = o.choices[i];
      v1::Choice* out = resp->add_choices();
      out->set_index(static_cast<int>(i));
      out->mutable_token_ids()->Add(c.tokens.begin(), c.tokens.end());
      out->set_text(c.text);
      out->set_finish_reason(ToProto(c.reason));
      AddLogprobs(c.tokens, c.logprobs, out);
    }
  }
  FillSummary(o, resp);
}

bool StreamMessage(int index, const SequenceEvents& ev, const CallOutcome& o, bool several, v1::GenerateStreamResponse* m) {
  if (ev.tokens.empty() && ev.text.empty() && !(several && ev.finished)) return false;
  m->set_index(index);
  m->mutable_token_ids()->Add(ev.tokens.begin(), ev.tokens.end());
  m->set_text(ev.text);
  AddLogprobs(ev.tokens, ev.logprobs, m);
  AddPromptLogprobs(o.prompt, ev.prompt_logprobs, m);
  if (several && ev.finished) m->set_finish_reason(ToProto(ev.reason));
  return true;
}

void StreamSummary(const CallOutcome& o, v1::GenerateStreamResponse* m) {
  FillSummary(o, m);
  m->set_finish_reason(ToProto(o.choices[0].reason));
}

}  // namespace tinygpt
