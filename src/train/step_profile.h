// step_profile.h — `moe train --profile`: the wall time of every phase of each training step
// (core/profile.h), as a "profile_ms" object in each metrics line and, at the end, a table of each
// phase's median time, its share of the median step and, for GEMM phases, its GFLOP/s against the
// GEMM peak measured at the start of the run.
#pragma once
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/profile.h"

namespace moe {

class StepProfile {
 public:
  StepProfile() = default;
  ~StepProfile();  // uninstalls the sink
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;

  void begin_step();                   // installs the sink, empty
  // Ends the step that took step_ms (its phases recorded so far) and uninstalls the sink, so that
  // evaluation and checkpoints are not counted; returns the step's phases in milliseconds, with
  // "untimed" the part of step_ms no phase covered.
  nlohmann::json end_step(double step_ms);
  // The table over the steps so far (the first left out when there are more: it warms caches and
  // allocates) to out.
  void print(std::FILE* out, double peak_gflops) const;

 private:
  PhaseTimes times_;
  std::vector<std::string> order_;                       // phases in the order first seen
  std::map<std::string, std::vector<double>> ms_, gflop_;  // per phase, per step
  std::vector<double> step_ms_;
};

}  // namespace moe
