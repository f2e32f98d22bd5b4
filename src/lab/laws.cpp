#include "lab/laws.h"

#include <ceres/ceres.h>
#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "core/error.h"
#include "core/rng.h"

namespace moe {

const std::vector<std::string>& law_coefficients(Law law) {
  static const std::vector<std::string> clark = {"a", "b", "c", "d", "E_start", "E_max"};
  static const std::vector<std::string> krajewski = {"a", "alpha", "b", "beta", "g", "gamma", "c"};
  return law == Law::clark ? clark : krajewski;
}

std::vector<std::pair<std::string, std::vector<double>>> published_fits(Law law) {
  if (law == Law::clark)
    return {{"S-BASE", {-0.082, -0.108, 0.009, 1.104, 1.847, 314.478}},
            {"RL-R", {-0.083, -0.126, 0.012, 1.111, 1.880, 469.982}},
            {"Hash", {-0.087, -0.136, 0.012, 1.157, 4.175, 477.741}}};
  return {{"Krajewski et al. 2024 (E = 64)", {18.1, 0.115, 30.8, 0.147, 2.1, 0.58, 0.47}}};
}

namespace {

// log10 Ê, written once for doubles and for Ceres' Jets.
template <class T>
T log10_e_hat(double E, const T& E_start, const T& E_max) {
  const T inner = T(E - 1.0) + T(1.0) / (T(1.0) / E_start - T(1.0) / E_max);
  return -log(T(1.0) / inner + T(1.0) / E_max) / std::log(10.0);
}

template <class T>
T clark_log10_loss(const T* c, const LawPoint& p) {
  const T ln = T(std::log10(p.N)), le = log10_e_hat(p.E, c[4], c[5]);
  return c[0] * ln + c[1] * le + c[2] * ln * le + c[3];
}

template <class T>
T krajewski_loss(const T* c, const LawPoint& p) {
  using std::pow;
  // c: a, alpha, b, beta, g, gamma, c
  return c[6] + (c[4] / pow(T(p.G), c[5]) + c[0]) / pow(T(p.N), c[1]) + c[2] / pow(T(p.D), c[3]);
}

// Residual: predicted minus measured log-loss (log10 for Clark, ln for Krajewski).
struct Residual {
  Law law;
  LawPoint p;
  // false where the law is undefined (Clark with E_start ≥ E_max, a non-positive Krajewski loss): Ceres
  // then rejects the step instead of taking a NaN.
  template <class T>
  bool operator()(const T* const c, T* r) const {
    using std::isfinite;
    if (law == Law::clark) {
      if (!(c[4] < c[5])) return false;
      r[0] = clark_log10_loss(c, p) - T(std::log10(p.loss));
    } else {
      const T l = krajewski_loss(c, p);
      if (!(l > T(0.0))) return false;
      r[0] = log(l) - T(std::log(p.loss));
    }
    return isfinite(r[0]);
  }
};

struct Solved {
  std::vector<double> coef;
  double cost = INFINITY;
};

Solved solve(Law law, const std::vector<LawPoint>& pts, std::vector<double> start, double delta) {
  const size_t n = start.size();
  ceres::Problem problem;
  double* x = start.data();
  for (const LawPoint& p : pts) {
    ceres::CostFunction* f =
        law == Law::clark ? static_cast<ceres::CostFunction*>(new ceres::AutoDiffCostFunction<Residual, 1, 6>(new Residual{law, p}))
                          : new ceres::AutoDiffCostFunction<Residual, 1, 7>(new Residual{law, p});
    problem.AddResidualBlock(f, new ceres::HuberLoss(delta), x);
  }
  if (law == Law::clark) {  // 1 < E_start < E_max
    problem.SetParameterLowerBound(x, 4, 1.0 + 1e-6);
    problem.SetParameterUpperBound(x, 4, 1e3);
    problem.SetParameterLowerBound(x, 5, 1.0 + 1e-3);
    problem.SetParameterUpperBound(x, 5, 1e7);
  } else {  // every coefficient non-negative, exponents below 3
    for (int i = 0; i < 7; ++i) problem.SetParameterLowerBound(x, i, 0.0);
    for (int i : {1, 3, 5}) problem.SetParameterUpperBound(x, i, 3.0);
  }
  ceres::Solver::Options opt;
  opt.max_num_iterations = 500;
  opt.function_tolerance = 1e-12;
  opt.gradient_tolerance = 1e-14;
  opt.parameter_tolerance = 1e-12;
  opt.num_threads = 1;
  opt.logging_type = ceres::SILENT;
  ceres::Solver::Summary summary;
  ceres::Solve(opt, &problem, &summary);
  Solved s;
  const bool finite = std::all_of(start.begin(), start.end(), [](double v) { return std::isfinite(v); });
  if (summary.IsSolutionUsable() && finite && std::isfinite(summary.final_cost) &&
      (law != Law::clark || start[4] < start[5])) {
    s.coef.assign(x, x + n);
    s.cost = summary.final_cost;
  }
  return s;
}

// The grid of starting points.
std::vector<std::vector<double>> starts(Law law, const std::vector<LawPoint>& pts) {
  std::vector<std::vector<double>> out;
  if (law == Law::clark) {
    double mean = 0.0, lnm = 0.0;  // of log10 L and log10 N
    for (const LawPoint& p : pts) {
      mean += std::log10(p.loss) / static_cast<double>(pts.size());
      lnm += std::log10(p.N) / static_cast<double>(pts.size());
    }
    for (double a : {-0.02, -0.1})
      for (double b : {-0.02, -0.1})
        for (double es : {1.5, 2.5, 5.0})
          for (double em : {30.0, 300.0, 3000.0}) out.push_back({a, b, 0.0, mean - a * lnm, es, em});
  } else {
    double lo = INFINITY;
    for (const LawPoint& p : pts) lo = std::min(lo, p.loss);
    for (double alpha : {0.1, 0.3, 0.6})
      for (double beta : {0.1, 0.3, 0.6})
        for (double gamma : {0.2, 0.6})
          for (double scale : {1.0, 10.0, 100.0})
            for (double cf : {0.0, 0.5})
              out.push_back({scale, alpha, scale, beta, scale / 10.0, gamma, cf * lo});
  }
  return out;
}

double rmse_of(Law law, const std::vector<double>& c, const std::vector<LawPoint>& pts) {
  double s = 0.0;
  for (const LawPoint& p : pts) {
    const double d = law_loss(law, c, p) - p.loss;
    s += d * d;
  }
  return std::sqrt(s / static_cast<double>(pts.size()));
}

}  // namespace

double clark_e_hat(double E, double E_start, double E_max) { return std::pow(10.0, log10_e_hat(E, E_start, E_max)); }

double law_loss(Law law, const std::vector<double>& coef, const LawPoint& p) {
  return law == Law::clark ? std::pow(10.0, clark_log10_loss(coef.data(), p)) : krajewski_loss(coef.data(), p);
}

double clark_effective_params(const std::vector<double>& c, double N, double E) {
  const double target = clark_log10_loss(c.data(), LawPoint{N, E, 1, 0, 0});
  const double le1 = log10_e_hat(1.0, c[4], c[5]);  // the dense model's Ê
  return std::pow(10.0, (target - c[3] - c[1] * le1) / (c[0] + c[2] * le1));
}

size_t min_points(Law law) { return law_coefficients(law).size() + 1; }

LawFit fit_law(Law law, const std::vector<LawPoint>& pts, int bootstrap, uint64_t seed) {
  // Ceres reports through glog; its warnings (a rejected step) are not the user's business.
  FLAGS_minloglevel = google::GLOG_ERROR;
  FLAGS_logtostderr = true;
  if (pts.size() < min_points(law))
    fail("the " + std::string(name_of(law)) + " law has " + std::to_string(law_coefficients(law).size()) +
         " coefficients and needs at least " + std::to_string(min_points(law)) + " points; the table has " +
         std::to_string(pts.size()));
  // Every variable of the law must vary, or its coefficients are not determined (one model size
  // leaves a and c of Clark's law free, one token count b and beta of Krajewski's).
  auto spread = [&](const char* what, double LawPoint::*v) {
    double lo = INFINITY, hi = 0;
    for (const LawPoint& p : pts) lo = std::min(lo, p.*v), hi = std::max(hi, p.*v);
    if (hi < 1.1 * lo)
      fail("the " + std::string(name_of(law)) + " law needs points at several " + what + " (within 10% here: " +
           format_number(lo) + " to " + format_number(hi) + "); its coefficients are not determined otherwise");
  };
  spread("model sizes N", &LawPoint::N);
  if (law == Law::clark) {
    spread("expert counts E", &LawPoint::E);
  } else {
    spread("token counts D", &LawPoint::D);
    spread("granularities G", &LawPoint::G);
  }
  constexpr double delta = 0.1;
  LawFit f;
  f.law = law;
  f.points = pts.size();
  Solved best;
  const std::vector<std::vector<double>> grid = starts(law, pts);
  f.starts = grid.size();
  for (const std::vector<double>& s : grid) {
    Solved r = solve(law, pts, s, delta);
    if (r.cost < best.cost) best = std::move(r);
  }
  if (best.coef.empty()) fail("the " + std::string(name_of(law)) + " fit did not converge from any of its starting points");
  f.coef = best.coef;
  f.rmse = rmse_of(law, f.coef, pts);
  // Bootstrap: refit resamples of the points (drawn with replacement) from the best fit; the 5th and
  // 95th percentiles of each coefficient.
  std::vector<std::vector<double>> samples;
  for (int b = 0; b < bootstrap; ++b) {
    std::vector<LawPoint> re(pts.size());
    for (size_t i = 0; i < pts.size(); ++i)
      re[i] = pts[static_cast<size_t>(rng_uniform(seed, static_cast<uint64_t>(b), i) * static_cast<float>(pts.size())) % pts.size()];
    Solved r = solve(law, re, f.coef, delta);
    if (!r.coef.empty()) samples.push_back(std::move(r.coef));
  }
  f.bootstrap = samples.size();
  for (size_t k = 0; k < f.coef.size(); ++k) {
    std::vector<double> v;
    for (const auto& s : samples) v.push_back(s[k]);
    std::sort(v.begin(), v.end());
    if (v.empty()) {
      f.interval.emplace_back(NAN, NAN);
      continue;
    }
    auto q = [&](double p) { return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))]; };
    f.interval.emplace_back(q(0.05), q(0.95));
  }
  return f;
}

namespace {

// A table: column names and rows of cells (text), from CSV or JSON lines.
struct Table {
  std::vector<std::string> cols;
  std::vector<std::vector<std::string>> rows;
  std::vector<size_t> line;  // each row's line in the file
};

std::vector<std::string> csv_cells(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else out.back() += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.emplace_back();
    } else if (c != '\r') {
      out.back() += c;
    }
  }
  return out;
}

Table read_table(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read " + path + "; give a results.csv or results.jsonl of `moe sweep`");
  Table t;
  std::string line;
  size_t n = 0;
  const bool jsonl = path.ends_with(".jsonl") || path.ends_with(".json");
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (!jsonl) {
      if (t.cols.empty()) {
        t.cols = csv_cells(line);
        continue;
      }
      t.rows.push_back(csv_cells(line));
      t.line.push_back(n);
      continue;
    }
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(path + " line " + std::to_string(n) + ": not a JSON object");
    std::vector<std::string> row(t.cols.size());
    for (const auto& [k, v] : j.items()) {
      auto it = std::find(t.cols.begin(), t.cols.end(), k);
      if (it == t.cols.end()) {
        t.cols.push_back(k);
        for (auto& r : t.rows) r.emplace_back();
        row.emplace_back();
        it = t.cols.end() - 1;
      }
      row[static_cast<size_t>(it - t.cols.begin())] = v.is_string() ? v.get<std::string>() : v.is_null() ? "" : v.dump();
    }
    t.rows.push_back(std::move(row));
    t.line.push_back(n);
  }
  if (t.cols.empty()) fail(path + " is empty; give a results table of `moe sweep`");
  return t;
}

}  // namespace

std::vector<LawPoint> read_law_points(const std::string& path, Law law, std::string n_column) {
  if (n_column.empty()) n_column = law == Law::clark ? "active_params" : "non_embedding_params";
  const Table t = read_table(path);
  std::vector<std::string> need = {n_column, "val_loss"};
  if (law == Law::clark) need.push_back("experts");
  else need.insert(need.end(), {"tokens", "granularity"});
  std::vector<size_t> idx;
  for (const std::string& c : need) {
    const auto it = std::find(t.cols.begin(), t.cols.end(), c);
    if (it == t.cols.end()) {
      std::string list;
      for (const std::string& x : need) list += (list.empty() ? "" : ", ") + x;
      fail(path + ": column \"" + c + "\" is missing; the " + std::string(name_of(law)) + " law reads " + list +
           " (names are case-sensitive)");
    }
    idx.push_back(static_cast<size_t>(it - t.cols.begin()));
  }
  std::vector<LawPoint> out;
  for (size_t r = 0; r < t.rows.size(); ++r) {
    double v[4] = {0, 0, 0, 0};
    for (size_t k = 0; k < need.size(); ++k) {
      const std::string cell = idx[k] < t.rows[r].size() ? t.rows[r][idx[k]] : "";
      char* end = nullptr;
      const double x = std::strtod(cell.c_str(), &end);
      if (cell.empty() || *end != '\0' || !std::isfinite(x) || x <= 0.0)
        fail(path + " line " + std::to_string(t.line[r]) + ": column " + need[k] + " holds \"" + cell +
             "\", not a positive number");
      v[k] = x;
    }
    LawPoint p;
    p.N = v[0];
    p.loss = v[1];
    if (law == Law::clark) p.E = v[2];
    else p.D = v[2], p.G = v[3];
    out.push_back(p);
  }
  return out;
}

}  // namespace moe
