#include "core/profile.h"

#include <cstring>

namespace moe {

namespace {
PhaseTimes* g_sink = nullptr;
PhaseTimer* g_open = nullptr;  // the innermost open timer
}  // namespace

void PhaseTimes::add(const char* name, double ms, double flops) {
  for (PhaseTime& p : phases_)
    if (p.name == name) {
      p.ms += ms;
      p.flops += flops;
      ++p.calls;
      return;
    }
  phases_.push_back({name, ms, flops, 1});
}

double PhaseTimes::total_ms() const {
  double s = 0.0;
  for (const PhaseTime& p : phases_) s += p.ms;
  return s;
}

PhaseTimes* profile_sink() { return g_sink; }
void set_profile_sink(PhaseTimes* sink) { g_sink = sink; }

PhaseTimer::PhaseTimer(const char* name, double flops) {
  if (!g_sink) return;
  name_ = name;
  flops_ = flops;
  parent_ = g_open;
  g_open = this;
  t0_ = clock_type::now();
}

void PhaseTimer::stop() {
  if (!name_) return;
  const double ms = ms_since(t0_);
  if (g_sink) g_sink->add(name_, ms - child_ms_, flops_);
  if (parent_) parent_->child_ms_ += ms;
  g_open = parent_;
  name_ = nullptr;
}

void profile_add(const char* name, double ms, double flops) {
  if (!g_sink) return;
  g_sink->add(name, ms, flops);
  if (g_open) g_open->child_ms_ += ms;
}

}  // namespace moe
