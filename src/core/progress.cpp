#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace moe {

Progress::Progress(int64_t total, int64_t start, std::string label)
    : total_(total), start_(start), label_(std::move(label)), tty_(::isatty(1)), t0_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_s() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

void Progress::update(int64_t i, const std::string& detail) {
  const int64_t done = i + 1 - start_, todo = total_ - start_;
  const double el = elapsed_s();
  const double eta = done > 0 ? el / static_cast<double>(done) * static_cast<double>(todo - done) : 0.0;
  if (tty_) {
    const int width = 30, fill = static_cast<int>(width * done / std::max<int64_t>(1, todo));
    std::printf("\r[%s%s] %lld/%lld %s ETA %.0fs  ", std::string(static_cast<size_t>(fill), '#').c_str(),
                std::string(static_cast<size_t>(width - fill), '.').c_str(), static_cast<long long>(i + 1),
                static_cast<long long>(total_), detail.c_str(), eta);
    if (i + 1 == total_) std::printf("\n");
  } else if (todo > 0 && (todo <= 50 || (done * 10) / todo != ((done - 1) * 10) / todo || i + 1 == total_)) {
    std::printf("%s %lld/%lld %s elapsed %.0fs ETA %.0fs\n", label_.c_str(), static_cast<long long>(i + 1),
                static_cast<long long>(total_), detail.c_str(), el, eta);
  }
  std::fflush(stdout);
}

void Progress::update(int64_t step, double loss, double tok_s) {
  char detail[64];
  std::snprintf(detail, sizeof detail, tty_ ? "loss %.3f %.0f tok/s" : "loss %.4f %.0f tok/s", loss, tok_s);
  update(step, detail);
}

}  // namespace moe
