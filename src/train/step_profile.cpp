#include "train/step_profile.h"

#include <algorithm>

namespace moe {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

StepProfile::~StepProfile() {
  if (profile_sink() == &times_) set_profile_sink(nullptr);
}

void StepProfile::begin_step() {
  times_.clear();
  set_profile_sink(&times_);
}

nlohmann::json StepProfile::end_step(double step_ms) {
  set_profile_sink(nullptr);
  nlohmann::json j = nlohmann::json::object();
  for (const PhaseTime& p : times_.phases()) {
    if (!ms_.count(p.name)) order_.push_back(p.name);
    ms_[p.name].push_back(p.ms);
    gflop_[p.name].push_back(p.flops / 1e9);
    j[p.name] = p.ms;
  }
  const double untimed = step_ms - times_.total_ms();
  if (!ms_.count("untimed")) order_.push_back("untimed");
  ms_["untimed"].push_back(untimed);
  gflop_["untimed"].push_back(0.0);
  j["untimed"] = untimed;
  step_ms_.push_back(step_ms);
  return j;
}

void StepProfile::print(std::FILE* out, double peak_gflops) const {
  if (step_ms_.empty()) return;
  const size_t skip = step_ms_.size() > 1 ? 1 : 0;  // the first step warms up
  auto tail = [&](const std::vector<double>& v) {
    // A phase first seen after the first step (evaluation-free steps all have the same phases) keeps all it has.
    return v.size() == step_ms_.size() ? std::vector<double>(v.begin() + static_cast<long>(skip), v.end()) : v;
  };
  const double step = median(tail(step_ms_));
  std::fprintf(out, "profile: median over %zu step(s) of %.1f ms; own time of each phase (children excluded)\n",
               step_ms_.size() - skip, step);
  std::fprintf(out, "  %-30s %10s %7s %9s %8s\n", "phase", "ms/step", "share", "GFLOP/s", "of peak");
  double gemm_ms = 0.0, gemm_gflop = 0.0;
  for (const std::string& name : order_) {
    const double ms = median(tail(ms_.at(name))), gf = median(tail(gflop_.at(name)));
    std::fprintf(out, "  %-30s %10.2f %6.1f%%", name.c_str(), ms, step > 0.0 ? 100.0 * ms / step : 0.0);
    if (gf > 0.0 && ms > 0.0) {
      const double rate = gf / (ms / 1e3);
      std::fprintf(out, " %9.1f %7.2f", rate, peak_gflops > 0.0 ? rate / peak_gflops : 0.0);
      gemm_ms += ms;
      gemm_gflop += gf;
    }
    std::fprintf(out, "\n");
  }
  if (gemm_ms > 0.0)
    std::fprintf(out, "  GEMM phases: %.1f%% of the step at %.1f GFLOP/s (%.2f of the %.0f GFLOP/s peak); the rest: %.1f ms\n",
                 100.0 * gemm_ms / step, gemm_gflop / (gemm_ms / 1e3), gemm_gflop / (gemm_ms / 1e3) / peak_gflops,
                 peak_gflops, step - gemm_ms);
}

}  // namespace moe
