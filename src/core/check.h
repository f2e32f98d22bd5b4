// check.h — the one way a config checks its fields. Every failed check throws moe::Error with one line
// that starts with the config's name and names the field, its value and the rule:
//
//   ConfigCheck check("moe");
//   check.positive("num_local_experts", num_local_experts);  // "moe config: num_local_experts = 0 must be positive"
//   check.require(top_k <= experts, "num_experts_per_tok = 9 is larger than …; choose …");
#pragma once
#include <cstdint>
#include <string>

namespace moe {

// A number as a message shows it: whole numbers without a fraction, others in %g.
std::string format_number(double v);

class ConfigCheck {
 public:
  explicit ConfigCheck(std::string what) : prefix_(std::move(what) + " config: ") {}

  [[noreturn]] void fail(const std::string& msg) const;
  void require(bool ok, const std::string& msg) const {
    if (!ok) fail(msg);
  }
  // "<field> = <v> must be positive" (NaN fails too).
  void positive(const char* field, double v) const;
  // "<field> = <v> must be >= 0" (NaN and infinities fail too).
  void non_negative(const char* field, double v) const;
  // lo <= v <= hi, or lo <= v < hi when open_above: "<field> = <v> must be in [lo, hi]" / "[lo, hi)".
  void in_range(const char* field, double v, double lo, double hi, bool open_above = false) const;
  // "<field> = <v> is above <cap><why>": upper bounds far above any model trained here, so that size
  // arithmetic cannot overflow (why: " (token shards hold uint16 ids)" or "; choose fewer experts").
  void at_most(const char* field, int64_t v, int64_t cap, const std::string& why) const;

 private:
  std::string prefix_;
};

}  // namespace moe
