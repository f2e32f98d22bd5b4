#include "core/check.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace moe {

std::string format_number(double v) {
  char buf[48];
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 1e15)
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  else
    std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void ConfigCheck::fail(const std::string& msg) const { moe::fail(prefix_ + msg); }

void ConfigCheck::positive(const char* field, double v) const {
  require(v > 0.0, std::string(field) + " = " + format_number(v) + " must be positive");
}

void ConfigCheck::non_negative(const char* field, double v) const {
  require(std::isfinite(v) && v >= 0.0, std::string(field) + " = " + format_number(v) + " must be >= 0");
}

void ConfigCheck::in_range(const char* field, double v, double lo, double hi, bool open_above) const {
  const bool ok = v >= lo && (open_above ? v < hi : v <= hi);
  require(ok, std::string(field) + " = " + format_number(v) + " must be in [" + format_number(lo) + ", " +
                  format_number(hi) + (open_above ? ")" : "]"));
}

void ConfigCheck::at_most(const char* field, int64_t v, int64_t cap, const std::string& why) const {
  require(v <= cap, std::string(field) + " = " + std::to_string(v) + " is above " + std::to_string(cap) + why);
}

}  // namespace moe
