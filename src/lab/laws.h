// laws.h — the scaling laws of docs/MECHANISMS.md §7 and their fit (`moe fit`).
//
//   clark:      log10 L = a·log10 N + b·log10 Ê + c·log10 N·log10 Ê + d,
//               1/Ê = 1/(E − 1 + (1/E_start − 1/E_max)⁻¹) + 1/E_max           (Clark et al. 2022)
//   krajewski:  L = c + (g/G^γ + a)/N^α + b/D^β                                  (Krajewski et al. 2024)
//
// A fit minimises the Huber loss (δ = 0.1, as Krajewski et al.) of the log-loss residuals (log10 for
// Clark, whose law is in log10; ln for Krajewski) with Ceres Solver, from a grid of starting points,
// keeping the best; its 90% intervals come from refitting bootstrap resamples of the points.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/enum_names.h"

namespace moe {

enum class Law { clark, krajewski };
template <>
struct EnumNames<Law> {
  static constexpr const char* what = "scaling law";
  static constexpr std::array<const char*, 2> names = {"clark", "krajewski"};
};

// One measured model: N parameters (Clark: active_params; Krajewski: non_embedding_params), E experts,
// granularity G, D training tokens, and its validation loss.
struct LawPoint {
  double N = 0, E = 1, G = 1, D = 0, loss = 0;
};

// The coefficient names in the order of the vectors below: a, b, c, d, E_start, E_max (Clark);
// a, alpha, b, beta, g, gamma, c (Krajewski).
const std::vector<std::string>& law_coefficients(Law law);
// The papers' fits (Clark: S-BASE, RL-R and Hash, in that order; Krajewski: one), with their names.
std::vector<std::pair<std::string, std::vector<double>>> published_fits(Law law);
// The loss the law predicts at p.
double law_loss(Law law, const std::vector<double>& coef, const LawPoint& p);
// Clark's saturating expert count Ê(E).
double clark_e_hat(double E, double E_start, double E_max);
// Clark's effective parameter count N̄(N, E): the dense N (E = 1) with the same predicted loss.
double clark_effective_params(const std::vector<double>& coef, double N, double E);

struct LawFit {
  Law law = Law::clark;
  std::vector<double> coef;
  std::vector<std::pair<double, double>> interval;  // 90% bootstrap interval per coefficient
  double rmse = 0.0;                                // of the predicted loss against the measured, in loss units
  double huber_delta = 0.1;
  size_t points = 0, starts = 0, bootstrap = 0;
};

// The points a law needs at least (one more than it has coefficients).
size_t min_points(Law law);
// Fits the law; throws moe::Error when there are too few points, when a variable of the law does not
// vary (all N, E, D or G within 10%), or when no start converges.
LawFit fit_law(Law law, const std::vector<LawPoint>& pts, int bootstrap = 200, uint64_t seed = 1);

// The points of a results table (a sweep's results.csv or results.jsonl): the columns the law reads
// (Clark: n_column, experts, val_loss; Krajewski: n_column, tokens, granularity, val_loss; n_column
// defaults to active_params for Clark and non_embedding_params for Krajewski). Throws moe::Error naming
// a missing column, or the line and column of a cell that is not a positive number.
std::vector<LawPoint> read_law_points(const std::string& path, Law law, std::string n_column = "");

}  // namespace moe
