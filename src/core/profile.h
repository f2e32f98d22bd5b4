// profile.h — wall time per phase of a training step, for `moe train --profile` (docs/PERFORMANCE.md).
//
// A phase has a name and, where it is GEMM work, the FLOPs it did, so that a table can show each
// phase's share of the step and its GFLOP/s. Phases nest: a PhaseTimer records its own time less its
// children's (the phases timed while it was open), so every millisecond is counted once and a step's
// phases add up to the step. Nothing is recorded unless a sink is installed; a timer then costs one
// branch. Phases are timed on the thread that drives the step (the layers' loops run their OpenMP
// teams inside a phase), so the sink is one per process.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/timer.h"

namespace moe {

struct PhaseTime {
  std::string name;
  double ms = 0.0;     // own time: children's excluded
  double flops = 0.0;  // GEMM FLOPs done in it (0: not counted)
  int64_t calls = 0;
};

class PhaseTimes {
 public:
  void add(const char* name, double ms, double flops);
  void clear() { phases_.clear(); }
  const std::vector<PhaseTime>& phases() const { return phases_; }  // in the order first recorded
  double total_ms() const;

 private:
  std::vector<PhaseTime> phases_;
};

// The sink the timers record into; null (the default) turns profiling off.
PhaseTimes* profile_sink();
void set_profile_sink(PhaseTimes* sink);

// A phase timed by its owner (a layer's own breakdown): recorded as a child of the open timer.
void profile_add(const char* name, double ms, double flops = 0.0);

// Times the scope it lives in as phase `name` (a string that outlives the step: a literal).
class PhaseTimer {
 public:
  explicit PhaseTimer(const char* name, double flops = 0.0);
  ~PhaseTimer() { stop(); }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;
  void stop();  // ends the phase before the scope does; later calls do nothing
  friend void profile_add(const char* name, double ms, double flops);

 private:
  const char* name_ = nullptr;  // null: not recording
  double flops_ = 0.0, child_ms_ = 0.0;
  PhaseTimer* parent_ = nullptr;
  clock_type::time_point t0_;
};


}  // namespace moe
