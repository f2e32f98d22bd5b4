// timer.h — wall-clock phase timing for the layers' breakdowns (steady clock, milliseconds).
#pragma once
#include <chrono>

namespace moe {

using clock_type = std::chrono::steady_clock;

inline double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

}  // namespace moe
