// progress.h — progress of a long run: a bar with rate and ETA on a terminal, a plain line every 10%
// of the way otherwise (logs, CI).
#pragma once
#include <chrono>
#include <cstdint>

namespace moe {

class Progress {
 public:
  // Steps start .. total-1 are to run.
  Progress(int64_t total, int64_t start);
  // Step `step` is done, at this loss and rate.
  void update(int64_t step, double loss, double tok_s);
  bool tty() const { return tty_; }

 private:
  int64_t total_, start_;
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace moe
