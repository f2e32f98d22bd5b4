#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace moe {

Progress::Progress(int64_t total, int64_t start)
    : total_(total), start_(start), tty_(::isatty(1)), t0_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t step, double loss, double tok_s) {
  const int64_t done = step + 1 - start_, todo = total_ - start_;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double eta = done > 0 ? el / static_cast<double>(done) * static_cast<double>(todo - done) : 0.0;
  if (tty_) {
    const int width = 30, fill = static_cast<int>(width * done / std::max<int64_t>(1, todo));
    std::printf("\r[%s%s] %lld/%lld loss %.3f %.0f tok/s ETA %.0fs  ", std::string(static_cast<size_t>(fill), '#').c_str(),
                std::string(static_cast<size_t>(width - fill), '.').c_str(), static_cast<long long>(step + 1),
                static_cast<long long>(total_), loss, tok_s, eta);
    if (step + 1 == total_) std::printf("\n");
  } else if (todo > 0 && ((done * 10) / todo != ((done - 1) * 10) / todo || step + 1 == total_)) {
    std::printf("step %lld/%lld loss %.4f %.0f tok/s elapsed %.0fs ETA %.0fs\n", static_cast<long long>(step + 1),
                static_cast<long long>(total_), loss, tok_s, el, eta);
  }
  std::fflush(stdout);
}

}  // namespace moe
