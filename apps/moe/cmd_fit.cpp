// cmd_fit.cpp — `moe fit RESULTS --law clark|krajewski`: fit a scaling law of docs/MECHANISMS.md §7 to a
// sweep's results table, with bootstrap 90% intervals and the papers' coefficients beside; for Clark,
// the effective parameter count N̄(N, E) of each measured (N, E).
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "lab/laws.h"

namespace moe::cli {
namespace {

nlohmann::json fit_json(const LawFit& f, const std::vector<LawPoint>& pts) {
  const auto& names = law_coefficients(f.law);
  nlohmann::json coef = nlohmann::json::object(), iv = nlohmann::json::object();
  for (size_t k = 0; k < names.size(); ++k) {
    coef[names[k]] = f.coef[k];
    iv[names[k]] = {f.interval[k].first, f.interval[k].second};
  }
  nlohmann::json j = {{"law", name_of(f.law)}, {"coefficients", coef}, {"intervals", iv}, {"rmse", f.rmse},
                      {"points", f.points}, {"huber_delta", f.huber_delta}, {"bootstrap", f.bootstrap}};
  if (f.law == Law::clark) {
    nlohmann::json eff = nlohmann::json::array();
    std::map<std::pair<double, double>, bool> seen;
    for (const LawPoint& p : pts)
      if (!std::exchange(seen[{p.N, p.E}], true))
        eff.push_back({{"N", p.N}, {"E", p.E}, {"effective_params", clark_effective_params(f.coef, p.N, p.E)}});
    j["effective_params"] = eff;
  }
  return j;
}

}  // namespace

void add_fit(CLI::App& app) {
  static std::string results, n_column;
  static Law law = Law::clark;
  static int bootstrap = 200;
  static bool json = false;
  auto* cmd = app.add_subcommand("fit", "Fit a scaling law (Clark et al. 2022 or Krajewski et al. 2024) to a sweep's "
                                        "results, with bootstrap 90% intervals");
  cmd->add_option("results", results, "results.csv or results.jsonl of `moe sweep`: reads val_loss, experts (clark), "
                                      "tokens and granularity (krajewski), and the parameter column")
      ->required();
  add_enum_option(cmd, "--law", law, "Law to fit")->required();
  cmd->add_option("--n-column", n_column, "Column of the parameter count N (default: active_params for clark, "
                                          "non_embedding_params for krajewski)");
  cmd->add_option("--bootstrap", bootstrap, "Bootstrap resamples for the intervals")->check(CLI::Range(0, 100000));
  cmd->add_flag("--json", json, "Print one JSON object: law, coefficients, intervals, rmse, points");
  cmd->callback([] {
    const std::vector<LawPoint> pts = read_law_points(results, law, n_column);
    const LawFit f = fit_law(law, pts, bootstrap);
    const nlohmann::json j = fit_json(f, pts);
    if (json) {
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    const auto& names = law_coefficients(law);
    const auto published = published_fits(law);
    std::printf("%s law fitted to %zu points of %s (Huber δ = %g on log-loss residuals, best of %zu starts, "
                "%zu bootstrap refits)\n",
                name_of(law), f.points, results.c_str(), f.huber_delta, f.starts, f.bootstrap);
    std::printf("| coefficient | fit | 90%% interval |");
    for (const auto& [who, c] : published) std::printf(" %s |", who.c_str());
    std::printf("\n|---|---|---|");
    for (size_t i = 0; i < published.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (size_t k = 0; k < names.size(); ++k) {
      std::printf("| %s | %.4g | [%.4g, %.4g] |", names[k].c_str(), f.coef[k], f.interval[k].first, f.interval[k].second);
      for (const auto& [who, c] : published) std::printf(" %g |", c[k]);
      std::printf("\n");
    }
    std::printf("rmse %.4f (loss units)\n", f.rmse);
    if (law == Law::clark) {
      std::printf("effective parameters N̄(N, E): the dense size with the same predicted loss\n| N | E | N̄ | N̄/N |\n|---|---|---|---|\n");
      for (const auto& e : j["effective_params"])
        std::printf("| %.4g | %g | %.4g | %.2f |\n", e["N"].get<double>(), e["E"].get<double>(), e["effective_params"].get<double>(),
                    e["effective_params"].get<double>() / e["N"].get<double>());
    }
  });
}

}  // namespace moe::cli
