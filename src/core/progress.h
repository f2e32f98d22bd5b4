// progress.h — progress of long work (training steps, corpus chunks, sweep points): a bar with rate and
// ETA on a terminal; otherwise a plain line every 10% of the way, or for every item when there are at
// most 50 (logs, CI).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace moe {

class Progress {
 public:
  // Items start .. total-1 are to be done; `label` starts each plain line ("step", "data: linux: chunk").
  Progress(int64_t total, int64_t start, std::string label = "step");
  // Item `i` is done; `detail` follows the count ("loss 3.210 1800 tok/s").
  void update(int64_t i, const std::string& detail);
  // Training's detail: the loss and the rate.
  void update(int64_t step, double loss, double tok_s);
  bool tty() const { return tty_; }
  double elapsed_s() const;

 private:
  int64_t total_, start_;
  std::string label_;
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace moe
